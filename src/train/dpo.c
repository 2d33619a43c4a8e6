/* f-DPO step: pair batches in the plain and shared-prompt layouts (include/fdpo/dpo.h),
 * policy/reference log-probs, the preference loss from objectives, and the backward pass
 * through fdpo_gpt2_backward with per-token upstream gradients. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#include "fdpo/dist.h"
#include "fdpo/dpo.h"
#include "fdpo/lora.h"

int fdpo_layout_parse(const char *name, fdpo_pair_layout *l) {
    if (name && !strcmp(name, "shared")) { *l = FDPO_LAYOUT_SHARED; return 0; }
    if (name && !strcmp(name, "plain")) { *l = FDPO_LAYOUT_PLAIN; return 0; }
    return fdpo_error("--layout: unknown layout '%s' (expected shared or plain)", name ? name : "");
}

size_t fdpo_pair_batch_tokens(fdpo_pair_layout layout, const fdpo_pref_pair *const *pairs, size_t n) {
    size_t total = 0;
    for (size_t k = 0; k < n; k++) {
        const fdpo_pref_pair *p = pairs[k];
        /* plain: (P + Cw - 1) + (P + Cl - 1); shared: (P - 1) + Cw + Cl */
        total += layout == FDPO_LAYOUT_PLAIN ? 2 * p->n_prompt + p->n_chosen + p->n_rejected - 2
                                             : p->n_prompt - 1 + p->n_chosen + p->n_rejected;
    }
    return total;
}

static void ensure_capacity(fdpo_pair_batch *pb, size_t n_tokens, size_t n_seq, size_t n_pairs) {
    if (n_tokens > pb->cap_tokens) {
        pb->cap_tokens = n_tokens;
        pb->tokens = fdpo_realloc(pb->tokens, n_tokens * sizeof *pb->tokens);
        pb->targets = fdpo_realloc(pb->targets, n_tokens * sizeof *pb->targets);
        pb->pos = fdpo_realloc(pb->pos, n_tokens * sizeof *pb->pos);
        pb->branch = fdpo_realloc(pb->branch, n_tokens * sizeof *pb->branch);
    }
    if (n_seq + 1 > pb->cap_seq) {
        pb->cap_seq = n_seq + 1;
        pb->seq_offset = fdpo_realloc(pb->seq_offset, pb->cap_seq * sizeof *pb->seq_offset);
    }
    if (n_pairs > pb->cap_pairs) {
        pb->cap_pairs = n_pairs;
        pb->chosen_begin = fdpo_realloc(pb->chosen_begin, n_pairs * sizeof(size_t));
        pb->chosen_end = fdpo_realloc(pb->chosen_end, n_pairs * sizeof(size_t));
        pb->rejected_begin = fdpo_realloc(pb->rejected_begin, n_pairs * sizeof(size_t));
        pb->rejected_end = fdpo_realloc(pb->rejected_end, n_pairs * sizeof(size_t));
    }
}

/* Append tokens ctx[0..n_ctx) at positions pos0.., in branch br, with target -1. */
static size_t put_context(fdpo_pair_batch *pb, size_t at, const int32_t *ctx, size_t n_ctx, int32_t pos0, uint8_t br) {
    for (size_t i = 0; i < n_ctx; i++) {
        pb->tokens[at + i] = ctx[i];
        pb->targets[at + i] = -1;
        pb->pos[at + i] = pos0 + (int32_t)i;
        pb->branch[at + i] = br;
    }
    return at + n_ctx;
}

/* Append a scored run: inputs [first, comp[0..n-1)) predicting comp[0..n), at positions pos0... */
static size_t put_completion(fdpo_pair_batch *pb, size_t at, int32_t first, const int32_t *comp, size_t n,
                             int32_t pos0, uint8_t br) {
    for (size_t i = 0; i < n; i++) {
        pb->tokens[at + i] = i == 0 ? first : comp[i - 1];
        pb->targets[at + i] = comp[i];
        pb->pos[at + i] = pos0 + (int32_t)i;
        pb->branch[at + i] = br;
    }
    return at + n;
}

void fdpo_pair_batch_build(fdpo_pair_batch *pb, fdpo_pair_layout layout, const fdpo_pref_pair *const *pairs, size_t n) {
    size_t n_tokens = fdpo_pair_batch_tokens(layout, pairs, n);
    size_t n_seq = layout == FDPO_LAYOUT_PLAIN ? 2 * n : n;
    ensure_capacity(pb, n_tokens, n_seq, n);
    pb->layout = layout;
    pb->n_pairs = n;
    size_t at = 0, s = 0;
    for (size_t k = 0; k < n; k++) {
        const fdpo_pref_pair *p = pairs[k];
        const size_t P = p->n_prompt;
        const int32_t last = p->prompt[P - 1];
        if (layout == FDPO_LAYOUT_PLAIN) {
            pb->seq_offset[s++] = at;
            at = put_context(pb, at, p->prompt, P - 1, 0, 0);
            pb->chosen_begin[k] = at;
            at = put_completion(pb, at, last, p->chosen, p->n_chosen, (int32_t)(P - 1), 0);
            pb->chosen_end[k] = at;
            pb->seq_offset[s++] = at;
            at = put_context(pb, at, p->prompt, P - 1, 0, 0);
            pb->rejected_begin[k] = at;
            at = put_completion(pb, at, last, p->rejected, p->n_rejected, (int32_t)(P - 1), 0);
            pb->rejected_end[k] = at;
        } else {
            pb->seq_offset[s++] = at;
            at = put_context(pb, at, p->prompt, P - 1, 0, 0);
            pb->chosen_begin[k] = at;
            at = put_completion(pb, at, last, p->chosen, p->n_chosen, (int32_t)(P - 1), 1);
            pb->chosen_end[k] = at;
            pb->rejected_begin[k] = at;
            at = put_completion(pb, at, last, p->rejected, p->n_rejected, (int32_t)(P - 1), 2);
            pb->rejected_end[k] = at;
        }
    }
    pb->seq_offset[s] = at;
    pb->batch = (fdpo_batch){
        .n_seq = n_seq, .n_tokens = at, .seq_offset = pb->seq_offset, .tokens = pb->tokens,
        .targets = pb->targets, .weights = NULL,
        /* plain sequences use the default positions 0..T-1 and ordinary causal attention */
        .pos = layout == FDPO_LAYOUT_PLAIN ? NULL : pb->pos,
        .branch = layout == FDPO_LAYOUT_PLAIN ? NULL : pb->branch,
        .skip_unweighted = 1, /* LM head over completion tokens only (src/model) */
        .fused_head = 1,      /* and chunked over the vocabulary: no [N, V] logits */
    };
}

void fdpo_pair_batch_free(fdpo_pair_batch *pb) {
    free(pb->tokens); free(pb->targets); free(pb->pos); free(pb->branch); free(pb->seq_offset);
    free(pb->chosen_begin); free(pb->chosen_end); free(pb->rejected_begin); free(pb->rejected_end);
    memset(pb, 0, sizeof *pb);
}

static double range_sum(const float *x, size_t b, size_t e) {
    double s = 0;
    for (size_t i = b; i < e; i++) s += x[i];
    return s;
}

/* Sum over positions [b, e) of each row's mean logit (row_sums: sums over the vocabulary). */
static double logits_sum(const float *row_sums, size_t V, size_t b, size_t e) {
    double s = 0;
    for (size_t i = b; i < e; i++) s += (double)row_sums[i] / (double)V;
    return s;
}

int fdpo_dpo_init(fdpo_dpo *d, fdpo_gpt2 *policy, fdpo_gpt2 *ref_live, const fdpo_dpo_config *cfg) {
    memset(d, 0, sizeof *d);
    if (ref_live && ref_live->config.vocab_size != policy->config.vocab_size)
        return fdpo_error("--ref: vocabulary size %zu differs from the policy's %zu",
                          ref_live->config.vocab_size, policy->config.vocab_size);
    d->policy = policy;
    d->ref_live = ref_live;
    d->cfg = *cfg;
    return 0;
}

void fdpo_dpo_free(fdpo_dpo *d) {
    fdpo_pair_batch_free(&d->pb);
    free(d->token_logp); free(d->ref_token_logp); free(d->d_token_logp); free(d->logit_sums);
    memset(d, 0, sizeof *d);
}

static void ensure_scratch(fdpo_dpo *d, size_t n_tokens) {
    if (n_tokens <= d->cap_tokens) return;
    d->cap_tokens = n_tokens;
    d->token_logp = fdpo_realloc(d->token_logp, n_tokens * sizeof(float));
    d->ref_token_logp = fdpo_realloc(d->ref_token_logp, n_tokens * sizeof(float));
    d->d_token_logp = fdpo_realloc(d->d_token_logp, n_tokens * sizeof(float));
    d->logit_sums = fdpo_realloc(d->logit_sums, n_tokens * sizeof(float));
}

static int check_pairs(const fdpo_gpt2 *m, const fdpo_pref_pair *const *pairs, size_t n) {
    for (size_t k = 0; k < n; k++) {
        const fdpo_pref_pair *p = pairs[k];
        if (p->n_prompt == 0 || p->n_chosen == 0 || p->n_rejected == 0)
            return fdpo_error("pair at line %zu: empty prompt or completion", p->line);
        size_t longest = p->n_prompt + (p->n_chosen > p->n_rejected ? p->n_chosen : p->n_rejected) - 1;
        if (longest > m->config.n_positions)
            return fdpo_error("pair at line %zu: %zu input tokens, more than the model's n_positions %zu "
                              "(set --max-length)", p->line, longest, m->config.n_positions);
    }
    return 0;
}

int fdpo_dpo_pair_logps(fdpo_gpt2 *m, fdpo_pair_layout layout, size_t micro_batch,
                        const fdpo_pref_pair *const *pairs, size_t n, double *out) {
    if (check_pairs(m, pairs, n)) return -1;
    fdpo_pair_batch pb = {0};
    float *tl = NULL;
    size_t cap = 0, mb = micro_batch ? micro_batch : n;
    int rc = 0;
    /* under MPI each rank computes its micro-batches and the sum over ranks fills out */
    if (fdpo_dist_size() > 1) memset(out, 0, 2 * n * sizeof *out);
    for (size_t k0 = 0, i = 0; k0 < n && !rc; k0 += mb, i++) {
        size_t k1 = k0 + mb < n ? k0 + mb : n;
        if (!fdpo_dist_mine(i)) continue;
        fdpo_pair_batch_build(&pb, layout, pairs + k0, k1 - k0);
        if (pb.batch.n_tokens > cap) { cap = pb.batch.n_tokens; tl = fdpo_realloc(tl, cap * sizeof *tl); }
        if (fdpo_gpt2_forward(m, &pb.batch, tl, NULL)) { rc = -1; break; }
        for (size_t k = 0; k < k1 - k0; k++) {
            out[2 * (k0 + k)] = range_sum(tl, pb.chosen_begin[k], pb.chosen_end[k]);
            out[2 * (k0 + k) + 1] = range_sum(tl, pb.rejected_begin[k], pb.rejected_end[k]);
        }
    }
    fdpo_pair_batch_free(&pb);
    free(tl);
    if (!rc) rc = fdpo_dist_sum_f64(out, 2 * n);
    return rc;
}

int fdpo_dpo_step(fdpo_dpo *d, const fdpo_pref_pair *const *pairs, size_t n, const double *ref_logp,
                  int grad, fdpo_dpo_metrics *out, double *pair_out) {
    const fdpo_pref_loss *L = &d->cfg.loss;
    const int simpo = L->kind == FDPO_LOSS_SIMPO, per_token_mean = L->kind == FDPO_LOSS_IPO || simpo;
    memset(out, 0, sizeof *out);
    if (n == 0) return fdpo_error("dpo step: no pairs");
    const int ref_self = d->ref_is_policy && !simpo;
    /* the reference is the policy, but its training forward drops adapter inputs: the
     * reference's forward runs apart, without dropout */
    const int ref_self_apart = ref_self && d->policy->lora && d->policy->lora->training && d->policy->lora->dropout > 0;
    const int ref_forward = !simpo && (ref_self_apart || (!ref_self && !ref_logp));
    if (!simpo && !ref_self && !ref_logp && !d->ref_live)
        return fdpo_error("dpo step: no reference (neither cached log-probs nor a live model)");
    if (check_pairs(d->policy, pairs, n) || (d->ref_live && ref_forward && !ref_self && check_pairs(d->ref_live, pairs, n)))
        return -1;
    /* step-wide denominators, so that micro-batches add up to the full-batch gradient */
    size_t chosen_tokens_total = 0, rejected_tokens_total = 0;
    for (size_t k = 0; k < n; k++) { chosen_tokens_total += pairs[k]->n_chosen; rejected_tokens_total += pairs[k]->n_rejected; }
    const double pair_scale = 1.0 / (double)n;
    const double sft_scale = L->sft_weight / (double)chosen_tokens_total;
    const size_t mb = d->cfg.micro_batch ? d->cfg.micro_batch : n;
    const size_t V = d->policy->config.vocab_size;
    double sum_loss = 0, sum_nll = 0, sum_rw = 0, sum_rl = 0, sum_acc = 0, sum_lpw = 0, sum_lpl = 0;
    double sum_sw = 0, sum_sl = 0, sum_logit_w = 0, sum_logit_l = 0;

    /* under MPI: this rank's micro-batches only; the sums below are then added over ranks
     * (the denominators above are already the whole step's) */
    if (pair_out && fdpo_dist_size() > 1) memset(pair_out, 0, 5 * n * sizeof *pair_out);
    for (size_t k0 = 0, i = 0; k0 < n; k0 += mb, i++) {
        const size_t k1 = k0 + mb < n ? k0 + mb : n, nk = k1 - k0;
        if (!fdpo_dist_mine(i)) continue;
        fdpo_pair_batch *pb = &d->pb;
        fdpo_pair_batch_build(pb, d->cfg.layout, pairs + k0, nk);
        ensure_scratch(d, pb->batch.n_tokens);
        if (ref_self_apart) {   /* the policy as evaluated (before its training forward, which replaces the activations) */
            d->policy->lora->training = 0;
            int frc = fdpo_gpt2_forward(d->policy, &pb->batch, d->ref_token_logp, NULL);
            d->policy->lora->training = 1;
            if (frc) return fdpo_error_context("reference forward");
        } else if (ref_forward) {
            /* LoRA: the live reference may be the policy itself with its adapters off (its
             * forward comes first; the policy's own forward below replaces the activations) */
            fdpo_lora *base_only = d->ref_live == d->policy ? d->policy->lora : NULL;
            if (base_only) base_only->enabled = 0;
            int frc = fdpo_gpt2_forward(d->ref_live, &pb->batch, d->ref_token_logp, NULL);
            if (base_only) base_only->enabled = 1;
            if (frc) return fdpo_error_context("reference forward");
        }
        /* LoRA dropout: rows named by their place among the step's pairs, not by the micro-batch,
         * whose size depends on the rank count in online runs */
        fdpo_lora_set_rows(d->policy, fdpo_pair_batch_tokens(d->cfg.layout, pairs, k0));
        if (fdpo_gpt2_forward(d->policy, &pb->batch, d->token_logp, NULL)) return fdpo_error_context("policy forward");
        out->tokens += pb->batch.n_tokens;
        if (fdpo_gpt2_logit_sums(d->policy, d->logit_sums)) return fdpo_error_context("policy forward");
        if (grad) memset(d->d_token_logp, 0, pb->batch.n_tokens * sizeof(float));
        for (size_t k = 0; k < nk; k++) {
            const fdpo_pref_pair *p = pairs[k0 + k];
            const size_t cb = pb->chosen_begin[k], ce = pb->chosen_end[k];
            const size_t rb = pb->rejected_begin[k], re = pb->rejected_end[k];
            double lp_w = range_sum(d->token_logp, cb, ce), lp_l = range_sum(d->token_logp, rb, re);
            double ref_w = 0, ref_l = 0;
            if (ref_self && !ref_self_apart) { ref_w = lp_w; ref_l = lp_l; }   /* the same forward's sums: l = 0 exactly */
            else if (ref_forward) { ref_w = range_sum(d->ref_token_logp, cb, ce); ref_l = range_sum(d->ref_token_logp, rb, re); }
            else if (!simpo) { ref_w = ref_logp[2 * (k0 + k)]; ref_l = ref_logp[2 * (k0 + k) + 1]; }
            /* the quantities the loss sees: sums, or per-token means for ipo/simpo */
            const double nw = per_token_mean ? (double)p->n_chosen : 1.0, nl = per_token_mean ? (double)p->n_rejected : 1.0;
            const double lw = (lp_w - ref_w) / nw, ll = (lp_l - ref_l) / nl;
            double dlw = 0, dll = 0;
            double loss = fdpo_pref_loss_pair(L, lw, ll, &dlw, &dll);
            sum_loss += loss;
            sum_nll -= lp_w;
            sum_rw += L->beta * lw; sum_rl += L->beta * ll;
            sum_acc += lw > ll ? 1.0 : lw == ll ? 0.5 : 0.0;
            sum_lpw += lp_w / nw; sum_lpl += lp_l / nl;
            if (!simpo) { sum_sw += L->beta * fdpo_score(&L->div, lw); sum_sl += L->beta * fdpo_score(&L->div, ll); }
            sum_logit_w += logits_sum(d->logit_sums, V, cb, ce);
            sum_logit_l += logits_sum(d->logit_sums, V, rb, re);
            if (pair_out) {
                double *po = pair_out + 5 * (k0 + k);
                po[0] = lp_w; po[1] = lp_l; po[2] = lw; po[3] = ll; po[4] = loss;
            }
            if (grad) {
                /* d(step loss)/d token_logp: the pair's coefficient on every completion token
                 * (divided by the length for per-token means), plus the SFT term on chosen */
                const float gw = (float)(pair_scale * dlw / nw - sft_scale), gl = (float)(pair_scale * dll / nl);
                for (size_t i = cb; i < ce; i++) d->d_token_logp[i] = gw;
                for (size_t i = rb; i < re; i++) d->d_token_logp[i] = gl;
            }
        }
        if (grad) fdpo_dist_arm_overlap(fdpo_dist_last_mine(i, (n + mb - 1) / mb));   /* --allreduce-overlap */
        if (grad && fdpo_gpt2_backward(d->policy, d->d_token_logp)) return fdpo_error_context("policy backward");
    }
    if (grad && fdpo_dist_overlap_backward_done()) return -1;   /* before the sums below, on every rank */
    if (fdpo_dist_size() > 1) {
        /* out->tokens stays this rank's: fdpo_trainer_step sums it over the ranks */
        double sums[11] = {sum_loss, sum_nll, sum_rw, sum_rl, sum_acc, sum_lpw, sum_lpl, sum_sw, sum_sl,
                           sum_logit_w, sum_logit_l};
        if (fdpo_dist_sum_f64(sums, 11) || (pair_out && fdpo_dist_sum_f64(pair_out, 5 * n))) return -1;
        sum_loss = sums[0]; sum_nll = sums[1]; sum_rw = sums[2]; sum_rl = sums[3]; sum_acc = sums[4];
        sum_lpw = sums[5]; sum_lpl = sums[6]; sum_sw = sums[7]; sum_sl = sums[8];
        sum_logit_w = sums[9]; sum_logit_l = sums[10];
    }
    const double inv = 1.0 / (double)n;
    out->pairs = n;
    out->pref_loss = sum_loss * inv;
    out->sft_nll = sum_nll / (double)chosen_tokens_total;
    out->loss = out->pref_loss + L->sft_weight * out->sft_nll;
    out->rewards_chosen = sum_rw * inv;
    out->rewards_rejected = sum_rl * inv;
    out->margins = (sum_rw - sum_rl) * inv;
    out->accuracy = sum_acc * inv;
    out->logps_chosen = sum_lpw * inv;
    out->logps_rejected = sum_lpl * inv;
    out->logits_chosen = sum_logit_w / (double)chosen_tokens_total;
    out->logits_rejected = sum_logit_l / (double)rejected_tokens_total;
    out->scores_chosen = simpo ? NAN : sum_sw * inv;
    out->scores_rejected = simpo ? NAN : sum_sl * inv;
    return 0;
}
