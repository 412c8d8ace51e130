/* BLAKE2b-64 of LANES ids of one block each, side by side: included by
   _idhash.c once per vector width, with LANES, VEC (a GCC vector of LANES
   uint64), NAME and TARGET (the instruction set it is compiled for) defined.
   The rounds are blake2b_64's, each word a vector of the ids' words. */

#define ROTR_V(x, n) (((x) >> (n)) | ((x) << (64 - (n))))
#define G_V(a, b, c, d, x, y)                \
    do {                                     \
        v[a] = v[a] + v[b] + (x);            \
        v[d] = ROTR_V(v[d] ^ v[a], 32);      \
        v[c] = v[c] + v[d];                  \
        v[b] = ROTR_V(v[b] ^ v[c], 24);      \
        v[a] = v[a] + v[b] + (y);            \
        v[d] = ROTR_V(v[d] ^ v[a], 16);      \
        v[c] = v[c] + v[d];                  \
        v[b] = ROTR_V(v[b] ^ v[c], 63);      \
    } while (0)
#define ROUND_V(r)                                                 \
    do {                                                           \
        G_V(0, 4, 8, 12, m[SIGMA[r][0]], m[SIGMA[r][1]]);          \
        G_V(1, 5, 9, 13, m[SIGMA[r][2]], m[SIGMA[r][3]]);          \
        G_V(2, 6, 10, 14, m[SIGMA[r][4]], m[SIGMA[r][5]]);         \
        G_V(3, 7, 11, 15, m[SIGMA[r][6]], m[SIGMA[r][7]]);         \
        G_V(0, 5, 10, 15, m[SIGMA[r][8]], m[SIGMA[r][9]]);         \
        G_V(1, 6, 11, 12, m[SIGMA[r][10]], m[SIGMA[r][11]]);       \
        G_V(2, 7, 8, 13, m[SIGMA[r][12]], m[SIGMA[r][13]]);        \
        G_V(3, 4, 9, 14, m[SIGMA[r][14]], m[SIGMA[r][15]]);        \
    } while (0)

/* blocks: LANES blocks of 128 bytes, zero-padded; len: each id's length in bytes;
   out: each id's h[0] after its one (last) block. */
__attribute__((target(TARGET))) static void
NAME(const uint8_t (*blocks)[128], const uint64_t *len, uint64_t *out)
{
    const VEC zero = {0};
    const uint64_t h0 = IV[0] ^ 0x01010000ULL ^ 8; /* as blake2b_64's parameter block */
    VEC v[16], m[16], t = zero;
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < LANES; k++)
            m[i][k] = load64(blocks[k] + 8 * i);
    for (int k = 0; k < LANES; k++)
        t[k] = len[k];
    v[0] = zero + h0;
    for (int i = 1; i < 8; i++) v[i] = zero + IV[i];
    for (int i = 0; i < 8; i++) v[i + 8] = zero + IV[i];
    v[12] ^= t;
    v[14] = ~v[14]; /* each block is its id's last */
    ROUND_V(0); ROUND_V(1); ROUND_V(2); ROUND_V(3); ROUND_V(4); ROUND_V(5);
    ROUND_V(6); ROUND_V(7); ROUND_V(8); ROUND_V(9); ROUND_V(10); ROUND_V(11);
    VEC h = v[0] ^ v[8] ^ h0; /* only h[0] makes the 8-byte digest */
    for (int k = 0; k < LANES; k++)
        out[k] = h[k];
}

#undef ROTR_V
#undef G_V
#undef ROUND_V
