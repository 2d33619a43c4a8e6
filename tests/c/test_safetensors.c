/* io + model tables: safetensors writer/reader round trip, a hand-made file from the format
 * spec, dtype conversions, and the GPT-2 parameter table against published numbers. */
#include <check.h>
#include "check_main.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fdpo/core.h"
#include "fdpo/gpt2.h"
#include "fdpo/io.h"

static char *tmp_file(char *dir, const char *name) {
    ck_assert_ptr_nonnull(mkdtemp(dir));
    return fdpo_path_join(dir, name);
}

START_TEST(writer_round_trip) {
    char dir[] = "/tmp/fdpo_st_XXXXXX";
    char *path = tmp_file(dir, "t.safetensors");
    float f32[6] = {1, -2, 3.5f, 0, 1e-30f, -7};
    int32_t i32[4] = {1, -1, 2147483647, 0};
    uint8_t u8[3] = {0, 7, 255};
    uint16_t f16[4] = {0x3c00, 0x0001, 0xfbff, 0x8000}; /* 1, 2^-24 (subnormal), -65504, -0 */
    uint16_t bf16[2] = {0x3f80, 0xc040};                /* 1, -3 */
    float scalar = 42;
    size_t s23[2] = {2, 3}, s4[1] = {4}, s3[1] = {3}, s2[1] = {2}, s04[2] = {0, 4};
    fdpo_st_writer *w = fdpo_st_writer_new();
    fdpo_st_writer_add(w, "a.f32", FDPO_F32, s23, 2, f32);
    fdpo_st_writer_add(w, "b.i32", FDPO_I32, s4, 1, i32);
    fdpo_st_writer_add(w, "c.u8", FDPO_U8, s3, 1, u8);
    fdpo_st_writer_add(w, "d.f16", FDPO_F16, s4, 1, f16);
    fdpo_st_writer_add(w, "e.bf16", FDPO_BF16, s2, 1, bf16);
    fdpo_st_writer_add(w, "f.scalar", FDPO_F32, NULL, 0, &scalar);
    fdpo_st_writer_add(w, "g.empty", FDPO_F32, s04, 2, NULL);
    fdpo_st_writer_meta(w, "format", "pt");
    fdpo_st_writer_meta(w, "note", "x\"y");
    ck_assert_int_eq(fdpo_st_writer_write(w, path), 0);
    fdpo_st_writer_free(w);

    size_t len;
    unsigned char *raw = (unsigned char *)fdpo_read_file(path, &len);
    ck_assert_ptr_nonnull(raw);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | raw[i];
    ck_assert_uint_eq(hlen % 8, 0);
    ck_assert_uint_eq(len, 8 + hlen + 24 + 16 + 3 + 8 + 4 + 4);
    free(raw);

    fdpo_safetensors st;
    ck_assert_int_eq(fdpo_st_open(&st, path), 0);
    ck_assert_uint_eq(st.n_tensors, 7);
    ck_assert_str_eq(fdpo_st_meta(&st, "format"), "pt");
    ck_assert_str_eq(fdpo_st_meta(&st, "note"), "x\"y");
    ck_assert_ptr_null(fdpo_st_meta(&st, "absent"));
    const fdpo_st_tensor *t = fdpo_st_find(&st, "a.f32");
    ck_assert_int_eq(t->ndim, 2);
    ck_assert_uint_eq(t->shape[0], 2);
    ck_assert_uint_eq(t->shape[1], 3);
    float out[6];
    ck_assert_int_eq(fdpo_st_read_f32(&st, t, out, 6), 0);
    ck_assert_mem_eq(out, f32, sizeof f32);
    ck_assert_int_eq(fdpo_st_read_f32(&st, t, out, 5), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "'a.f32'"));
    t = fdpo_st_find(&st, "b.i32");
    ck_assert_str_eq(t->dtype_name, "I32");
    ck_assert_mem_eq(st.data + t->begin, i32, sizeof i32);
    ck_assert_int_eq(fdpo_st_read_f32(&st, t, out, 4), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "'b.i32'"));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "I32"));
    t = fdpo_st_find(&st, "c.u8");
    ck_assert_mem_eq(st.data + t->begin, u8, 3);
    ck_assert_int_eq(fdpo_st_read_f32(&st, fdpo_st_find(&st, "d.f16"), out, 4), 0);
    ck_assert(out[0] == 1.0f && out[1] == ldexpf(1.0f, -24) && out[2] == -65504.0f);
    ck_assert(out[3] == 0.0f && signbit(out[3]));
    ck_assert_int_eq(fdpo_st_read_f32(&st, fdpo_st_find(&st, "e.bf16"), out, 2), 0);
    ck_assert(out[0] == 1.0f && out[1] == -3.0f);
    t = fdpo_st_find(&st, "f.scalar");
    ck_assert_int_eq(t->ndim, 0);
    ck_assert_int_eq(fdpo_st_read_f32(&st, t, out, 1), 0);
    ck_assert(out[0] == 42.0f);
    t = fdpo_st_find(&st, "g.empty");
    ck_assert_uint_eq(t->end - t->begin, 0);
    fdpo_st_close(&st);
    unlink(path);
    rmdir(dir);
    free(path);
}
END_TEST

/* A file written byte by byte from the format description (not by our writer). */
/* The writer refuses what fdpo_st_open refuses (and what the format cannot say), writing
 * nothing: a name given twice, a tensor named __metadata__ (the header's metadata key),
 * more than 8 dimensions (ndim 9 was cut to 8, a shape that is not the data's). */
START_TEST(writer_refuses_what_the_reader_refuses) {
    char dir[] = "/tmp/fdpo_st_XXXXXX";
    char *path = tmp_file(dir, "t.safetensors");
    float x[2] = {1, 2};
    size_t s2[1] = {2}, s9[9] = {2, 1, 1, 1, 1, 1, 1, 1, 1};
    struct { const char *name2; const size_t *shape2; int ndim2; int meta; const char *msg; } cases[] = {
        {"a", s2, 1, 0, "t.safetensors: tensor 'a' is added twice"},
        {"__metadata__", s2, 1, 1, "t.safetensors: tensor '__metadata__': the header's metadata key"},
        {"b", s9, 9, 0, "t.safetensors: tensor 'b': 9 dimensions (0 to 8)"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fdpo_st_writer *w = fdpo_st_writer_new();
        fdpo_st_writer_add(w, "a", FDPO_F32, s2, 1, x);
        fdpo_st_writer_add(w, cases[i].name2, FDPO_F32, cases[i].shape2, cases[i].ndim2, x);
        if (cases[i].meta) fdpo_st_writer_meta(w, "format", "pt");
        ck_assert_int_eq(fdpo_st_writer_write(w, path), -1);
        ck_assert_msg(strstr(fdpo_last_error(), cases[i].msg), "%s", fdpo_last_error());
        ck_assert_int_ne(access(path, F_OK), 0);   /* nothing written */
        fdpo_st_writer_free(w);
    }
    fdpo_st_writer *w = fdpo_st_writer_new();   /* 8 dimensions: written, read back as given */
    fdpo_st_writer_add(w, "b", FDPO_F32, s9, 8, x);
    ck_assert_int_eq(fdpo_st_writer_write(w, path), 0);
    fdpo_st_writer_free(w);
    fdpo_safetensors st;
    ck_assert_int_eq(fdpo_st_open(&st, path), 0);
    const fdpo_st_tensor *t = fdpo_st_find(&st, "b");
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(t->ndim, 8);
    ck_assert_uint_eq(t->shape[0], 2);
    fdpo_st_close(&st);
    unlink(path); rmdir(dir); free(path);
}
END_TEST

START_TEST(reads_spec_file) {
    char dir[] = "/tmp/fdpo_st_XXXXXX";
    char *path = tmp_file(dir, "spec.safetensors");
    const char *header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                         "\"__metadata__\":{\"k\":\"v\"}}";
    size_t hl = strlen(header);
    unsigned char buf[256] = {0};
    buf[0] = (unsigned char)hl;
    memcpy(buf + 8, header, hl);
    float vals[2] = {0.25f, -8.0f};
    memcpy(buf + 8 + hl, vals, 8);
    ck_assert_int_eq(fdpo_write_file_atomic(path, buf, 8 + hl + 8), 0);
    fdpo_safetensors st;
    ck_assert_int_eq(fdpo_st_open(&st, path), 0);
    float out[2];
    ck_assert_int_eq(fdpo_st_read_f32(&st, fdpo_st_find(&st, "w"), out, 2), 0);
    ck_assert(out[0] == 0.25f && out[1] == -8.0f);
    ck_assert_str_eq(fdpo_st_meta(&st, "k"), "v");
    fdpo_st_close(&st);
    /* one byte short: the tensor's offsets now run past the data */
    ck_assert_int_eq(fdpo_write_file_atomic(path, buf, 8 + hl + 7), 0);
    ck_assert_int_eq(fdpo_st_open(&st, path), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "'w'"));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "spec.safetensors"));
    unlink(path);
    rmdir(dir);
    free(path);
}
END_TEST

/* The in-memory reader sees the same bytes as the file reader (the fuzz harness's entry). */
START_TEST(reads_buffer) {
    const char *header = "{\"w\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[0,4]}}";
    size_t hl = strlen(header);
    unsigned char buf[128] = {0};
    buf[0] = (unsigned char)hl;
    memcpy(buf + 8, header, hl);
    uint16_t bf16[2] = {0x4049, 0xbe80}; /* 3.140625, -0.25 */
    memcpy(buf + 8 + hl, bf16, 4);
    fdpo_safetensors st;
    ck_assert_int_eq(fdpo_st_open_buffer(&st, "mem.safetensors", buf, 8 + hl + 4), 0);
    float out[2];
    ck_assert_int_eq(fdpo_st_read_f32(&st, fdpo_st_find(&st, "w"), out, 2), 0);
    ck_assert(out[0] == 3.140625f && out[1] == -0.25f);
    fdpo_st_close(&st);
    ck_assert_int_eq(fdpo_st_open_buffer(&st, "mem.safetensors", buf, 7), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "mem.safetensors: file is 7 bytes"));
}
END_TEST

/* shape [2^40, 2^40] is 2^80 elements: the element count must not wrap around to 0 and let
 * a 0-byte tensor through (found while writing the fuzz harness). */
START_TEST(huge_shape_does_not_wrap) {
    const char *header = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,0]}}";
    size_t hl = strlen(header);
    unsigned char buf[160] = {0};
    buf[0] = (unsigned char)hl;
    memcpy(buf + 8, header, hl);
    fdpo_safetensors st;
    ck_assert_int_eq(fdpo_st_open_buffer(&st, "big.safetensors", buf, 8 + hl), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "big.safetensors: tensor 'w': shape too large"));
}
END_TEST

/* A FIFO (or any non-regular file) is refused at once instead of blocking the open. */
START_TEST(fifo_is_refused) {
    char dir[] = "/tmp/fdpo_st_XXXXXX";
    char *path = tmp_file(dir, "model.safetensors");
    ck_assert_int_eq(mkfifo(path, 0600), 0);
    fdpo_safetensors st;
    ck_assert_int_eq(fdpo_st_open(&st, path), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "not a regular file"));
    size_t len;
    ck_assert_ptr_null(fdpo_read_file(path, &len));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "not a regular file (a FIFO)"));
    ck_assert_ptr_null(fdpo_read_file(dir, &len));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "not a regular file (a directory)"));
    unlink(path);
    rmdir(dir);
    free(path);
}
END_TEST

/* GPT-2 small has 124,439,808 parameters (the published count with the tied head). */
START_TEST(gpt2_table_matches_published_sizes) {
    fdpo_gpt2_config c = {.vocab_size = 50257, .n_positions = 1024, .n_embd = 768, .n_layer = 12, .n_head = 12, .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    ck_assert_uint_eq(m->n_params, 124439808);
    size_t sum = 0;
    for (int i = 0; i < (int)m->n_tensors; i++) {
        const fdpo_gpt2_tensor *t = &m->tensors[i];
        ck_assert_uint_eq(t->offset, sum);
        sum += t->numel;
        ck_assert_int_eq(t->decay, t->ndim == 2);
    }
    ck_assert_str_eq(m->tensors[4].name, "transformer.h.{i}.attn.c_attn.weight");
    ck_assert_uint_eq(m->tensors[4].shape[0], 768);
    ck_assert_uint_eq(m->tensors[4].shape[1], 2304);
    ck_assert_ptr_eq(m->params.lnfb, m->params_memory + m->n_params - 768);
    fdpo_gpt2_free(m);
    fdpo_gpt2_config bad = c;
    bad.n_head = 7;
    ck_assert_ptr_null(fdpo_gpt2_create(&bad));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "n_head 7"));
    bad = c;
    bad.vocab_size = 0;
    ck_assert_ptr_null(fdpo_gpt2_create(&bad));
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "vocab_size"));
}
END_TEST

/* A params-shaped buffer written under prefixed HF names reads back bit for bit. */
START_TEST(gpt2_buffer_round_trip) {
    char dir[] = "/tmp/fdpo_st_XXXXXX";
    char *path = tmp_file(dir, "moments.safetensors");
    fdpo_gpt2_config c = {.vocab_size = 11, .n_positions = 5, .n_embd = 6, .n_layer = 2, .n_head = 2, .layer_norm_epsilon = 1e-5f};
    fdpo_gpt2 *m = fdpo_gpt2_create(&c);
    ck_assert_ptr_nonnull(m);
    fdpo_gpt2_init(m, 5);
    fdpo_st_writer *w = fdpo_st_writer_new();
    fdpo_st_writer_add_gpt2(w, m, m->params_memory, "adam.m.");
    ck_assert_int_eq(fdpo_st_writer_write(w, path), 0);
    fdpo_st_writer_free(w);
    fdpo_safetensors st;
    ck_assert_int_eq(fdpo_st_open(&st, path), 0);
    ck_assert_uint_eq(st.n_tensors, 2 + 12 * 2 + 2);
    const fdpo_st_tensor *t = fdpo_st_find(&st, "adam.m.transformer.h.1.mlp.c_fc.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->shape[0], 6);
    ck_assert_uint_eq(t->shape[1], 24);
    float *back = calloc(m->n_params, sizeof(float));
    ck_assert_int_eq(fdpo_st_read_gpt2(&st, m, back, "adam.m."), 0);
    ck_assert_mem_eq(back, m->params_memory, m->n_params * sizeof(float));
    ck_assert_int_eq(fdpo_st_read_gpt2(&st, m, back, "adam.v."), -1);
    ck_assert_ptr_nonnull(strstr(fdpo_last_error(), "'adam.v.transformer.wte.weight'"));
    free(back);
    fdpo_st_close(&st);
    fdpo_gpt2_free(m);
    unlink(path);
    rmdir(dir);
    free(path);
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_test(tc, writer_round_trip);
    tcase_add_test(tc, writer_refuses_what_the_reader_refuses);
    tcase_add_test(tc, reads_spec_file);
    tcase_add_test(tc, reads_buffer);
    tcase_add_test(tc, huge_shape_does_not_wrap);
    tcase_add_test(tc, fifo_is_refused);
    tcase_add_test(tc, gpt2_table_matches_published_sizes);
    tcase_add_test(tc, gpt2_buffer_round_trip);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
