/* LoRA adapters on the linear layers of GPT-2 and Llama (include/fdpo/lora.h): options and
 * target matching, the adapter tensor table, init, the forward/backward kernels the model
 * calls after each adapted linear layer, and merging into the base weights. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "fdpo/lora.h"
#include "model/llama_internal.h"

/* Hugging Face module paths of the adaptable linear layers, in forward order */
static const char *const module_path[FDPO_LORA_N_SITES] = {
    "transformer.h.{i}.attn.c_attn", "transformer.h.{i}.attn.c_proj", "transformer.h.{i}.mlp.c_fc",
    "transformer.h.{i}.mlp.c_proj",
    "model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj", "model.layers.{i}.self_attn.v_proj",
    "model.layers.{i}.self_attn.o_proj", "model.layers.{i}.mlp.gate_proj", "model.layers.{i}.mlp.up_proj",
    "model.layers.{i}.mlp.down_proj",
};

static void family_sites(const fdpo_gpt2 *m, int *first, int *end) {
    if (m->config.arch == FDPO_ARCH_LLAMA) { *first = FDPO_LORA_Q; *end = FDPO_LORA_N_SITES; }
    else { *first = FDPO_LORA_C_ATTN; *end = FDPO_LORA_MLP_C_PROJ + 1; }
}

const char *fdpo_lora_module(const fdpo_gpt2 *m, fdpo_lora_site s) {
    int first, end;
    family_sites(m, &first, &end);
    return (int)s >= first && (int)s < end ? module_path[s] : NULL;
}

/* in/out features of a site's linear layer */
static void site_dims(const fdpo_gpt2_config *c, fdpo_lora_site s, size_t *in, size_t *out) {
    size_t C = c->n_embd, hd = c->head_dim ? c->head_dim : (c->n_head ? C / c->n_head : 0);
    size_t QD = c->n_head * hd, KD = c->n_kv_head * hd, F = c->intermediate_size;
    size_t dims[FDPO_LORA_N_SITES][2] = {
        {C, 3 * C}, {C, C}, {C, 4 * C}, {4 * C, C},
        {C, QD}, {C, KD}, {C, KD}, {QD, C}, {C, F}, {C, F}, {F, C},
    };
    *in = dims[s][0];
    *out = dims[s][1];
}

/* PEFT's rule: target == the module path (after the layer index) or a '.'-suffix of it */
static int target_matches(const char *target, size_t len, const char *path) {
    const char *rel = strstr(path, "{i}.") + 4;
    size_t n = strlen(rel);
    if (len == n) return !strncmp(rel, target, len);
    return len < n && rel[n - len - 1] == '.' && !strncmp(rel + n - len, target, len);
}

/* PEFT's default target_modules for the model type (no --lora-targets) */
static const char *default_targets(const fdpo_gpt2 *m) { return m->config.arch == FDPO_ARCH_LLAMA ? "q_proj,v_proj" : "c_attn"; }

const char *fdpo_lora_default_targets(const fdpo_gpt2 *m) { return default_targets(m); }

/* PEFT's target_modules "all-linear" (_maybe_include_all_linear_layers): every linear layer
 * but the output head, named as PEFT saves them after expanding it */
static const char *all_linear_targets(const fdpo_gpt2 *m) {
    return m->config.arch == FDPO_ARCH_LLAMA ? "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj" : "c_attn,c_proj,c_fc";
}

/* The comma list of module names a targets value stands for: the default for NULL, the
 * family's linear layers for PEFT's "all-linear" (the whole value, as PEFT takes it), else
 * the value itself */
static const char *targets_list(const char *targets, const fdpo_gpt2 *m) {
    if (!targets) return default_targets(m);
    return !strcasecmp(targets, FDPO_LORA_ALL_LINEAR) ? all_linear_targets(m) : targets;   /* PEFT lowercases it */
}

/* Which sites the comma list selects (mask by site); errors name the list as `name`
 * (--lora-targets, or an adapter's target_modules). */
static int parse_targets(const char *targets, const fdpo_gpt2 *m, int *selected, const char *name) {
    int first, end;
    family_sites(m, &first, &end);
    targets = targets_list(targets, m);
    memset(selected, 0, FDPO_LORA_N_SITES * sizeof *selected);
    if (!targets || !*targets) return fdpo_error("%s: empty (name the linear layers to adapt)", name);
    for (const char *p = targets; *p;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len && *p == ' ') { p++; len--; }
        while (len && p[len - 1] == ' ') len--;
        if (len == 0) return fdpo_error("%s: '%s' has an empty entry", name, targets);
        int hit = 0;
        for (int s = first; s < end; s++)
            if (target_matches(p, len, module_path[s])) { selected[s] = 1; hit = 1; }
        if (!hit && len == strlen(FDPO_LORA_ALL_LINEAR) && !strncasecmp(p, FDPO_LORA_ALL_LINEAR, len))
            return fdpo_error("%s: '%s': '" FDPO_LORA_ALL_LINEAR "' (PEFT's every linear layer but the output head) is a "
                              "value of its own, not an entry of a list of module names", name, targets);
        if (!hit) {
            char list[512] = "";
            for (int s = first; s < end; s++) {
                size_t used = strlen(list);
                snprintf(list + used, sizeof list - used, "%s%s", s > first ? ", " : "", strstr(module_path[s], "{i}.") + 4);
            }
            return fdpo_error("%s: '%.*s' matches no linear layer of this %s model; its modules are %s "
                              "(each under %.*sN.)", name, (int)len, p, m->config.arch == FDPO_ARCH_LLAMA ? "llama" : "gpt2",
                              list, (int)(strstr(module_path[first], "{i}") - module_path[first]), module_path[first]);
        }
        p += len;
        while (*p == ' ') p++;
        if (*p == ',') p++;
    }
    return 0;
}

int fdpo_lora_name_matches(const char *path, const char *entry) {
    const size_t p = strlen(path), n = strlen(entry);
    return p >= n && !strcmp(path + p - n, entry) && (p == n || path[p - n - 1] == '.');
}

int fdpo_lora_check_continued(const fdpo_gpt2 *m, const char *owner, long r, double alpha, const char *targets) {
    if ((long)m->lora->r != r || m->lora->alpha != alpha)
        return fdpo_error("--lora-r/--lora-alpha: %ld/%g differ from the adapter of %s (r=%zu, alpha=%g), which this run "
                          "continues", r, alpha, owner, m->lora->r, m->lora->alpha);
    const int same = targets ? fdpo_lora_targets_same(targets, m->lora->targets, m, "--lora-targets") : 1;
    if (same == 0)
        return fdpo_error("--lora-targets: %s differs from the target modules of the adapter of %s (%s), which this run "
                          "continues", targets, owner, m->lora->targets);
    return same == 1 ? 0 : -1;
}

int fdpo_lora_excludes(const char *targets, const fdpo_gpt2 *m, const char *entry) {
    int selected[FDPO_LORA_N_SITES];
    if (parse_targets(targets, m, selected, "target_modules")) return -1;
    for (int s = 0; s < FDPO_LORA_N_SITES; s++) {
        const char *brace = selected[s] ? strstr(module_path[s], "{i}") : NULL;
        for (size_t i = 0; brace && i < m->config.n_layer; i++) {
            char path[128];
            snprintf(path, sizeof path, "%.*s%zu%s", (int)(brace - module_path[s]), module_path[s], i, brace + 3);
            if (fdpo_lora_name_matches(path, entry)) return 1;
        }
    }
    return 0;
}

int fdpo_lora_opts_check(const fdpo_lora_opts *o, const fdpo_gpt2 *m) {
    if (o->r <= 0) return fdpo_error("--lora-r: %ld must be >= 1", o->r);
    if (o->r > 65536) return fdpo_error("--lora-r: %ld is larger than any layer's width", o->r);
    if (!isfinite(o->alpha) || !(o->alpha > 0)) return fdpo_error("--lora-alpha: %g must be a number > 0", o->alpha);
    if (!(o->dropout >= 0 && o->dropout < 1)) return fdpo_error("--lora-dropout: %g must be in [0, 1)", o->dropout);
    int selected[FDPO_LORA_N_SITES];
    return parse_targets(o->targets, m, selected, "--lora-targets");
}

int fdpo_lora_targets_check(const char *targets, const fdpo_gpt2 *m, const char *name) {
    int selected[FDPO_LORA_N_SITES];
    return parse_targets(targets, m, selected, name);
}

int fdpo_lora_targets_same(const char *targets, const char *other, const fdpo_gpt2 *m, const char *name) {
    int a[FDPO_LORA_N_SITES], b[FDPO_LORA_N_SITES];
    if (parse_targets(targets, m, a, name) || parse_targets(other, m, b, "target_modules")) return -1;
    return !memcmp(a, b, sizeof a);
}

static char *layer_name(const char *pattern, const char *suffix) {
    char buf[256];
    snprintf(buf, sizeof buf, "base_model.model.%s.%s", pattern, suffix);
    return fdpo_strdup(buf);
}

int fdpo_lora_attach(fdpo_gpt2 *m, const fdpo_lora_opts *o, uint64_t seed) {
    if (fdpo_lora_opts_check(o, m)) return -1;
    if (m->lora) fdpo_lora_merge(m);
    int selected[FDPO_LORA_N_SITES];
    parse_targets(o->targets, m, selected, "--lora-targets");
    fdpo_lora *l = fdpo_calloc(1, sizeof *l);
    l->r = (size_t)o->r;
    l->alpha = o->alpha;
    l->dropout = o->dropout;
    l->scale = (float)(o->alpha / (double)o->r);
    l->targets = fdpo_strdup(targets_list(o->targets, m));   /* the names its adapter_config.json lists */
    l->enabled = 1;
    l->seed = seed;
    fdpo_gpt2 *v = &l->view;
    v->config = m->config;
    l->score_tensor = -1;
    size_t L = m->config.n_layer, r = l->r, offset = 0;
    for (int s = 0; s < FDPO_LORA_N_SITES; s++) {
        l->site_tensor[s] = -1;
        if (!selected[s]) continue;
        size_t in, out;
        site_dims(&m->config, (fdpo_lora_site)s, &in, &out);
        l->site_in[s] = in;
        l->site_out[s] = out;
        l->site_tensor[s] = (int)v->n_tensors;
        for (int ab = 0; ab < 2; ab++) {
            fdpo_gpt2_tensor *t = &v->tensors[v->n_tensors++];
            char *name = layer_name(module_path[s], ab ? "lora_B.weight" : "lora_A.weight");
            t->name = fdpo_strv_push(&l->names, name);
            free(name);
            t->per_layer = 1;
            t->ndim = 2;
            t->shape[0] = ab ? out : r;
            t->shape[1] = ab ? r : in;
            t->numel = L * r * (ab ? out : in);
            t->offset = offset;
            t->decay = 1;
            offset += t->numel;
        }
    }
    const size_t n_adapter_tensors = v->n_tensors;
    const float *score = m->config.num_labels ? fdpo_gpt2_score_weight(m) : NULL;   /* m->lora not set yet: m's own */
    if (score) {   /* a reward model: the score head trains in full (PEFT's modules_to_save = ["score"]) */
        fdpo_gpt2_tensor *t = &v->tensors[v->n_tensors];
        l->score_tensor = (int)v->n_tensors++;
        t->name = fdpo_strv_push(&l->names, "base_model.model.score.weight");
        t->ndim = 2;
        t->shape[0] = m->config.num_labels;
        t->shape[1] = m->config.n_embd;
        t->numel = m->config.num_labels * m->config.n_embd;
        t->offset = offset;
        t->decay = 1;
        offset += t->numel;
    }
    v->n_params = offset;
    v->params_memory = fdpo_calloc(offset ? offset : 1, sizeof(float));
    v->grads_memory = fdpo_calloc(offset ? offset : 1, sizeof(float));
    if (score) memcpy(v->params_memory + v->tensors[l->score_tensor].offset, score, v->tensors[l->score_tensor].numel * sizeof(float));
    /* A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)); B = 0 */
    fdpo_rng rng;
    fdpo_rng_seed(&rng, seed ^ 0x4c6f5241ull);
    for (size_t ti = 0; ti < n_adapter_tensors; ti += 2) {
        const fdpo_gpt2_tensor *t = &v->tensors[ti];
        double bound = 1.0 / sqrt((double)t->shape[1]);
        float *a = v->params_memory + t->offset;
        for (size_t i = 0; i < t->numel; i++) a[i] = (float)((2.0 * fdpo_rng_uniform(&rng) - 1.0) * bound);
    }
    m->lora = l;
    return 0;
}

void fdpo_lora_detach(fdpo_gpt2 *m) {
    fdpo_lora *l = m ? m->lora : NULL;
    if (!l) return;
    free(l->view.params_memory);
    free(l->view.grads_memory);
    fdpo_strv_free(&l->names);
    free(l->targets);
    free(l->base_model);
    free(l->u); free(l->keep); free(l->du);
    free(l);
    m->lora = NULL;
}

float *fdpo_lora_score(fdpo_lora *l, int grad) {
    if (!l || l->score_tensor < 0) return NULL;
    return (grad ? l->view.grads_memory : l->view.params_memory) + l->view.tensors[l->score_tensor].offset;
}

void fdpo_lora_zero_grad(fdpo_lora *l) { memset(l->view.grads_memory, 0, l->view.n_params * sizeof(float)); }

void fdpo_lora_begin_step(fdpo_lora *l, uint64_t step) {
    l->mask_step = step;
    l->mask_forward = 0;
    l->rows_set = 0;
    l->training = 1;
}

void fdpo_lora_set_rows(fdpo_gpt2 *m, uint64_t row0) {
    if (!m || !m->lora) return;
    m->lora->next_row0 = row0;
    m->lora->rows_set = 1;
}

/* the base weight a site adds to, one layer's: Llama [out, in], GPT-2 [in, out] */
static float *base_weight(fdpo_gpt2 *m, fdpo_lora_site s, size_t layer) {
    size_t in, out;
    site_dims(&m->config, s, &in, &out);
    size_t per = in * out;
    if (m->config.arch == FDPO_ARCH_LLAMA) {
        static const int role[FDPO_LORA_N_SITES] = {-1, -1, -1, -1, LR_QW, LR_KW, LR_VW, LR_OW, LR_GATEW, LR_UPW, LR_DOWNW};
        return m->params_memory + m->tensors[m->llama->role[role[s]]].offset + layer * per;
    }
    float *w[] = {m->params.qkvw, m->params.attprojw, m->params.fcw, m->params.fcprojw};
    return w[s] + layer * per;
}

void fdpo_lora_merge(fdpo_gpt2 *m) { fdpo_lora_merge_exact(m, NULL); }

void fdpo_lora_merge_exact(fdpo_gpt2 *m, const double *exact) {
    fdpo_lora *l = m->lora;
    if (!l) return;
    size_t L = m->config.n_layer, r = l->r;
    int conv1d = m->config.arch == FDPO_ARCH_GPT2;
    const double s_exact = l->alpha / (double)r;   /* not the forward's float scale: one rounding per element */
    for (int s = 0; s < FDPO_LORA_N_SITES; s++) {
        int ti = l->site_tensor[s];
        if (ti < 0) continue;
        size_t in = l->site_in[s], out = l->site_out[s];
        for (size_t layer = 0; layer < L; layer++) {
            const float *A = l->view.params_memory + l->view.tensors[ti].offset + layer * r * in;
            const float *B = l->view.params_memory + l->view.tensors[ti + 1].offset + layer * out * r;
            float *W = base_weight(m, (fdpo_lora_site)s, layer);
            #pragma omp parallel for schedule(static)
            for (size_t o = 0; o < out; o++)
                for (size_t i = 0; i < in; i++) {
                    double d = 0;
                    for (size_t k = 0; k < r; k++) d += (double)B[o * r + k] * (double)A[k * in + i];
                    float *w = conv1d ? &W[i * out + o] : &W[o * in + i];
                    *w = (float)((exact ? exact[w - m->params_memory] : (double)*w) + s_exact * d);
                }
        }
    }
    if (l->score_tensor >= 0) {   /* the trained score head goes back into the model */
        m->lora = NULL;
        memcpy(fdpo_gpt2_score_weight(m), fdpo_lora_score(l, 0), l->view.tensors[l->score_tensor].numel * sizeof(float));
        m->lora = l;
    }
    fdpo_lora_detach(m);
}

/* ---- kernels ---- */

/* keep [N, IN] = 0 with probability p, else 1/(1-p) (torch.nn.Dropout): row t (batch row
 * rows[t], or t) from its own xoshiro stream keyed by (seed, step, row0 + batch row, layer,
 * site), so a token's mask is the same whichever rank or micro-batch computes it, and whether
 * or not the last layer runs on the head's rows only (docs/lora.md) */
static void lora_dropout_mask(const fdpo_lora *l, float *keep, size_t N, const size_t *rows, size_t IN, size_t layer,
                              fdpo_lora_site s) {
    const float scale = (float)(1.0 / (1.0 - l->dropout));
    for (size_t t = 0; t < N; t++) {
        uint64_t parts[5] = {l->seed, l->mask_step, l->row0 + (rows ? rows[t] : t), (uint64_t)layer, (uint64_t)s};
        fdpo_rng rng;
        fdpo_rng_seed(&rng, fdpo_hash64(FDPO_HASH_INIT, parts, sizeof parts));
        for (size_t i = 0; i < IN; i++) keep[t * IN + i] = fdpo_rng_uniform(&rng) < l->dropout ? 0.0f : scale;
    }
}

/* out [N,OUT] += s * xin [N,IN] @ A^T [IN,r] @ B^T [r,OUT];  u [N,r] = xin @ A^T (kept) */
static void lora_linear_forward(float *out, float *u, const float *xin, const float *A, const float *B, float s,
                                size_t N, size_t IN, size_t OUT, size_t r) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)r, (int)IN, 1.0f, xin, (int)IN, A, (int)IN,
                0.0f, u, (int)r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)OUT, (int)r, s, u, (int)r, B, (int)r,
                1.0f, out, (int)OUT);
}

/* dB [OUT,r] += s dout^T u;  du [N,r] = s dout B;  dA [r,IN] += du^T xin;  dxa [N,IN] = du A
 * (dxa: the adapter's share of d input before dropout; beta_dx 1 adds it into dx directly) */
static void lora_linear_backward(float *dxa, float beta_dx, float *dA, float *dB, float *du, const float *dout,
                                 const float *u, const float *xin, const float *A, const float *B, float s,
                                 size_t N, size_t IN, size_t OUT, size_t r) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)OUT, (int)r, (int)N, s, dout, (int)OUT, u, (int)r,
                1.0f, dB, (int)r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)r, (int)OUT, s, dout, (int)OUT, B, (int)r,
                0.0f, du, (int)r);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)r, (int)IN, (int)N, 1.0f, du, (int)r, xin, (int)IN,
                1.0f, dA, (int)IN);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)IN, (int)r, 1.0f, du, (int)r, A, (int)IN,
                beta_dx, dxa, (int)IN);
}

static size_t max_in(const fdpo_lora *l) {
    size_t mx = 0;
    for (int s = 0; s < FDPO_LORA_N_SITES; s++) if (l->site_tensor[s] >= 0 && l->site_in[s] > mx) mx = l->site_in[s];
    return mx;
}

static int first_site(const fdpo_lora *l) {
    for (int s = 0; s < FDPO_LORA_N_SITES; s++) if (l->site_tensor[s] >= 0) return s;
    return -1;
}

/* this (layer, site)'s slice of u: [N, r] at slot (layer, adapter index) */
static float *u_slot(fdpo_lora *l, size_t layer, fdpo_lora_site s) {
    size_t n_sites = l->view.n_tensors / 2;
    return l->u + (layer * n_sites + (size_t)l->site_tensor[s] / 2) * l->cap_tokens * l->r;
}

static int dropout_on(const fdpo_lora *l) { return l->training && l->dropout > 0; }

void fdpo_lora_forward(fdpo_gpt2 *m, fdpo_lora_site s, size_t layer, float *out, const float *x, size_t N,
                       const size_t *rows) {
    fdpo_lora *l = m->lora;
    if (!l || !l->enabled || l->site_tensor[s] < 0 || N == 0) return;
    if ((int)s == first_site(l) && layer == 0) {   /* a new forward begins */
        if (N > l->cap_tokens) {
            size_t n_sites = l->view.n_tensors / 2;
            free(l->u); free(l->keep); free(l->du);
            l->u = fdpo_malloc(m->config.n_layer * n_sites * N * l->r * sizeof(float));
            l->keep = fdpo_malloc(2 * N * max_in(l) * sizeof(float));
            l->du = fdpo_malloc(N * l->r * sizeof(float));
            l->cap_tokens = N;
        }
        /* rows named by the trainer (fdpo_lora_set_rows), else by this process's forward index
         * in the step (bit 63: apart from any row a trainer names) */
        l->row0 = l->rows_set ? l->next_row0 : (1ull << 63) | (l->mask_forward << 40);
        l->rows_set = 0;
        l->mask_forward++;
    }
    int ti = l->site_tensor[s];
    size_t r = l->r, in = l->site_in[s], o = l->site_out[s];
    const float *A = l->view.params_memory + l->view.tensors[ti].offset + layer * r * in;
    const float *B = l->view.params_memory + l->view.tensors[ti + 1].offset + layer * o * r;
    const float *xin = x;
    if (dropout_on(l)) {
        float *keep = l->keep, *xd = l->keep + N * in;
        lora_dropout_mask(l, keep, N, rows, in, layer, s);
        for (size_t i = 0; i < N * in; i++) xd[i] = x[i] * keep[i];
        xin = xd;
    }
    lora_linear_forward(out, u_slot(l, layer, s), xin, A, B, l->scale, N, in, o, r);
}

void fdpo_lora_backward(fdpo_gpt2 *m, fdpo_lora_site s, size_t layer, float *dx, const float *dout, const float *x, size_t N,
                        const size_t *rows) {
    fdpo_lora *l = m->lora;
    if (!l || !l->enabled || l->site_tensor[s] < 0 || N == 0) return;
    int ti = l->site_tensor[s];
    size_t r = l->r, in = l->site_in[s], o = l->site_out[s];
    const float *A = l->view.params_memory + l->view.tensors[ti].offset + layer * r * in;
    const float *B = l->view.params_memory + l->view.tensors[ti + 1].offset + layer * o * r;
    float *dA = l->view.grads_memory + l->view.tensors[ti].offset + layer * r * in;
    float *dB = l->view.grads_memory + l->view.tensors[ti + 1].offset + layer * o * r;
    const float *u = u_slot(l, layer, s);
    if (!dropout_on(l)) {
        lora_linear_backward(dx, 1.0f, dA, dB, l->du, dout, u, x, A, B, l->scale, N, in, o, r);
        return;
    }
    /* the forward's mask again (same key), then d x = (du A) * keep */
    float *keep = l->keep, *xd = l->keep + N * in;
    lora_dropout_mask(l, keep, N, rows, in, layer, s);
    for (size_t i = 0; i < N * in; i++) xd[i] = x[i] * keep[i];
    lora_linear_backward(xd, 0.0f, dA, dB, l->du, dout, u, xd, A, B, l->scale, N, in, o, r);
    for (size_t i = 0; i < N * in; i++) dx[i] += xd[i] * keep[i];
}

/* out [N,OUT] += s * x [N,IN] @ A^T @ B^T for the adapter at (layer, site): the decoder's
 * hook (generation and scoring). No dropout and nothing kept for a backward pass; the
 * [N, r] intermediate lives for the call only, so decoders of one model may run side by side. */
void fdpo_lora_apply(const fdpo_gpt2 *m, fdpo_lora_site s, size_t layer, float *out, const float *x, size_t N) {
    const fdpo_lora *l = m->lora;
    if (!l || !l->enabled || l->site_tensor[s] < 0 || N == 0) return;
    int ti = l->site_tensor[s];
    size_t r = l->r, in = l->site_in[s], o = l->site_out[s];
    const float *A = l->view.params_memory + l->view.tensors[ti].offset + layer * r * in;
    const float *B = l->view.params_memory + l->view.tensors[ti + 1].offset + layer * o * r;
    float *u = fdpo_malloc(N * r * sizeof(float));
    lora_linear_forward(out, u, x, A, B, l->scale, N, in, o, r);
    free(u);
}

int fdpo_lora_set_enabled(fdpo_gpt2 *m, int on) {
    if (!m || !m->lora) return 0;
    int was = m->lora->enabled;
    m->lora->enabled = on;
    return was;
}
