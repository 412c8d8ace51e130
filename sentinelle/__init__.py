"""Sentinelle for producers: :mod:`sentinelle.client` sends events in the contract's batch form."""

from __future__ import annotations
