/* gemm-check: fdpo's two GEMM entry points on random operands, for tests against numpy.
 *
 *   gemm-check --shape M,N,K --trans TA,TB [--alpha A] [--beta B] [--seed S] [--pad P] --out FILE
 *       A = op^-1 of [M,K] (stored [K,M] when TA=1), B likewise [K,N]; leading dimensions
 *       are the row lengths + P (default 3: the GEMMs must honour lda/ldb/ldc). Writes A, B
 *       (fp32, [rows, ld]), C0 [M, N+P] (the initial C), and the results of
 *       fdpo_sgemm (C_sgemm) and of fdpo_gemm_bf16 on the bf16-rounded A and B (C_bf16, with
 *       A16/B16 as fp32 arrays holding the bf16 values fdpo rounded to). The route of the bf16
 *       GEMM follows the environment (FDPO_BF16_GEMM, FDPO_FORCE_BF16_FALLBACK). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>
#include "fdpo/core.h"
#include "fdpo/io.h"
#include "harness.h"
#include "model/gpt2_internal.h"

static const char *garg(int argc, char **argv, const char *name) {
    for (int i = 1; i + 1 < argc; i++) if (!strcmp(argv[i], name)) return argv[i + 1];
    return NULL;
}

static float bf16_value(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int h_gemm_check(int argc, char **argv);
int h_gemm_check(int argc, char **argv) {
    const char *shape = garg(argc, argv, "--shape"), *trans = garg(argc, argv, "--trans"), *out = garg(argc, argv, "--out");
    size_t M, N, K, P = garg(argc, argv, "--pad") ? (size_t)atol(garg(argc, argv, "--pad")) : 3;
    int ta, tb;
    if (!shape || sscanf(shape, "%zu,%zu,%zu", &M, &N, &K) != 3 || M == 0 || N == 0 || K == 0)
        return fdpo_error("--shape: expected M,N,K (each >= 1)");
    if (!trans || sscanf(trans, "%d,%d", &ta, &tb) != 2) return fdpo_error("--trans: expected TA,TB (0 or 1)");
    if (!out) return fdpo_error("--out: required");
    float alpha = garg(argc, argv, "--alpha") ? strtof(garg(argc, argv, "--alpha"), NULL) : 1.0f;
    float beta = garg(argc, argv, "--beta") ? strtof(garg(argc, argv, "--beta"), NULL) : 0.0f;
    fdpo_rng rng;
    fdpo_rng_seed(&rng, garg(argc, argv, "--seed") ? strtoull(garg(argc, argv, "--seed"), NULL, 10) : 1);
    size_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
    size_t lda = ac + P, ldb = bc + P, ldc = N + P;
    float *A = fdpo_malloc(ar * lda * sizeof(float)), *B = fdpo_malloc(br * ldb * sizeof(float));
    float *C0 = fdpo_malloc(M * ldc * sizeof(float)), *Cs = fdpo_malloc(M * ldc * sizeof(float));
    float *Ch = fdpo_malloc(M * ldc * sizeof(float));
    float *A16 = fdpo_malloc(ar * lda * sizeof(float)), *B16 = fdpo_malloc(br * ldb * sizeof(float));
    uint16_t *ha = fdpo_malloc(ar * lda * sizeof(uint16_t)), *hb = fdpo_malloc(br * ldb * sizeof(uint16_t));
    for (size_t i = 0; i < ar * lda; i++) A[i] = (float)fdpo_rng_normal(&rng);
    for (size_t i = 0; i < br * ldb; i++) B[i] = (float)fdpo_rng_normal(&rng);
    for (size_t i = 0; i < M * ldc; i++) C0[i] = (float)fdpo_rng_normal(&rng);
    memcpy(Cs, C0, M * ldc * sizeof(float));
    memcpy(Ch, C0, M * ldc * sizeof(float));
    fdpo_f32_to_bf16(ha, A, ar * lda);
    fdpo_f32_to_bf16(hb, B, br * ldb);
    for (size_t i = 0; i < ar * lda; i++) A16[i] = bf16_value(ha[i]);
    for (size_t i = 0; i < br * ldb; i++) B16[i] = bf16_value(hb[i]);
    fdpo_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
               alpha, A, (int)lda, B, (int)ldb, beta, Cs, (int)ldc);
    fdpo_gemm_bf16(ta, tb, M, N, K, alpha, ha, lda, hb, ldb, beta, Ch, ldc);
    fdpo_st_writer *w = fdpo_st_writer_new();
    size_t sa[2] = {ar, lda}, sb[2] = {br, ldb}, sc[2] = {M, ldc};
    fdpo_st_writer_add(w, "A", FDPO_F32, sa, 2, A);
    fdpo_st_writer_add(w, "B", FDPO_F32, sb, 2, B);
    fdpo_st_writer_add(w, "A16", FDPO_F32, sa, 2, A16);
    fdpo_st_writer_add(w, "B16", FDPO_F32, sb, 2, B16);
    fdpo_st_writer_add(w, "C0", FDPO_F32, sc, 2, C0);
    fdpo_st_writer_add(w, "C_sgemm", FDPO_F32, sc, 2, Cs);
    fdpo_st_writer_add(w, "C_bf16", FDPO_F32, sc, 2, Ch);
    int rc = fdpo_st_writer_write(w, out);
    fdpo_st_writer_free(w);
    free(A); free(B); free(C0); free(Cs); free(Ch); free(A16); free(B16); free(ha); free(hb);
    return rc;
}
