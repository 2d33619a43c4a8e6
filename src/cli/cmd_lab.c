/* fdpo lab EXPERIMENT: exact f-regularised alignment on finite problems (DESIGN.md §4, §6).
 * A thin layer over src/lab: flags, problem loading, and CSV/JSON tables. docs/lab.md
 * documents every experiment, flag and column. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cJSON.h>
#include "cli/commands.h"
#include "cli/eval_common.h"
#include "cli/flags.h"
#include "fdpo/core.h"
#include "fdpo/lab.h"
#include "fdpo/lab_algos.h"
#include "fdpo/objectives.h"

/* ---------------- tables (CSV or a JSON array of flat objects) ---------------- */

/* A row is written when it ends: CSV fields as they come, JSON rows built with cJSON
 * (escaping, non-finite numbers as null) and printed on one line each. */
typedef struct {
    FILE *f;
    fdpo_atomic_file af;
    int to_file, col, rows;
    cJSON *row; /* the JSON row being built; NULL for CSV */
    int json;
    const char *const *cols;
    int ncols;
} table;

static int table_open(table *t, const char *path, const char *format, const char *const *cols, int ncols) {
    memset(t, 0, sizeof *t);
    if (!strcmp(format, "json")) t->json = 1;
    else if (strcmp(format, "csv")) return fdpo_error("--format: unknown format '%s' (expected csv, json)", format);
    t->cols = cols;
    t->ncols = ncols;
    if (path) {
        if (fdpo_atomic_open(&t->af, path)) return fdpo_error_context("--out %s", path);
        t->f = t->af.f;
        t->to_file = 1;
    } else t->f = stdout;
    if (t->json) fputs("[", t->f);
    else for (int i = 0; i < ncols; i++) fprintf(t->f, "%s%s", i ? "," : "", cols[i]);
    if (!t->json) fputc('\n', t->f);
    return 0;
}
/* the next column's name (JSON: the row object, made on its first field) */
static const char *table_key(table *t) {
    const char *key = t->cols[t->col++];
    if (t->json && !t->row) t->row = cJSON_CreateObject();
    else if (!t->json && t->col > 1) fputc(',', t->f);
    return key;
}
/* numbers as %.17g, which reads back to the same double (cJSON's own printing may drop the
 * last bit); JSON has no inf/nan: null */
static void table_num(table *t, double v) {
    const char *key = table_key(t);
    char text[32];
    if (isfinite(v)) snprintf(text, sizeof text, "%.17g", v);
    if (!t->json) fputs(isfinite(v) ? text : isnan(v) ? "nan" : v > 0 ? "inf" : "-inf", t->f);
    else if (isfinite(v)) cJSON_AddRawToObject(t->row, key, text);
    else cJSON_AddNullToObject(t->row, key);
}
static void table_int(table *t, long long v) {
    const char *key = table_key(t);
    char text[32];
    snprintf(text, sizeof text, "%lld", v);
    if (t->json) cJSON_AddRawToObject(t->row, key, text);
    else fputs(text, t->f);
}
static void table_str(table *t, const char *s) {
    const char *key = table_key(t);
    if (t->json) cJSON_AddStringToObject(t->row, key, s);
    else fputs(s, t->f);
}
static void table_bool(table *t, int b) {
    const char *key = table_key(t);
    if (t->json) cJSON_AddBoolToObject(t->row, key, b);
    else fputs(b ? "1" : "0", t->f);
}
static void table_end_row(table *t) {
    if (t->json) {
        char *text = cJSON_PrintUnformatted(t->row);
        fprintf(t->f, "%s\n%s", t->rows ? "," : "", text ? text : "{}");
        free(text);
        cJSON_Delete(t->row);
        t->row = NULL;
    } else {
        fputc('\n', t->f);
    }
    t->col = 0;
    t->rows++;
}
/* ends an opened table's text (JSON's closing bracket); stdout is flushed, and a failed flush
 * is an error naming its cause (main's later check found the stream in error with errno gone:
 * "the stream is in error" for a full disk) */
static int table_end(table *t) {
    cJSON_Delete(t->row); /* a row left unfinished by an error */
    t->row = NULL;
    if (t->json) fputs("\n]\n", t->f);
    if (t->to_file) return 0;
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout))
        return fdpo_error("<stdout>: write error: %s", errno ? strerror(errno) : "the stream is in error");
    return 0;
}

/* Finishes one subcommand's outputs (the tables it opened, the --export-* files with a path):
 * when rc == 0 all are kept together (fdpo_atomic_commit_all: none replaces its old file
 * unless every one was written out; a full disk at --out left new exports beside the old
 * table), else all are dropped. Returns the first error. */
static int outputs_finish(int rc, table *t1, int opened1, table *t2, int opened2, fdpo_atomic_file *e1,
                          fdpo_atomic_file *e2) {
    fdpo_atomic_file *afs[4];
    size_t n = 0;
    table *ts[2] = {opened1 ? t1 : NULL, opened2 ? t2 : NULL};
    for (int i = 0; i < 2; i++)
        if (ts[i]) {
            if (table_end(ts[i]) && rc == 0) rc = -1;
            if (ts[i]->to_file) afs[n++] = &ts[i]->af;
        }
    if (e1) afs[n++] = e1;
    if (e2) afs[n++] = e2;
    if (rc) for (size_t i = 0; i < n; i++) fdpo_atomic_abort(afs[i]);
    else rc = fdpo_atomic_commit_all(afs, n);
    return rc;
}

static int table_finish(table *t, int opened, int rc) { return outputs_finish(rc, t, opened, NULL, 0, NULL, NULL); }

/* An optional CSV beside the table (--export-*): opened atomically with its header line,
 * nothing when path is NULL; outputs_finish keeps it when rc == 0, else drops it. */
static int export_open(fdpo_atomic_file *af, const char *flag, const char *path, const char *header) {
    if (!path) return 0;
    if (fdpo_atomic_open(af, path)) return fdpo_error_context("--%s %s", flag, path);
    fprintf(af->f, "%s\n", header);
    return 0;
}

/* ---------------- shared flags and inputs ---------------- */

typedef struct {
    long n, seed, threads;
    fdpo_lab_gen gen;   /* the generated problem: flag defaults = fdpo_lab_gen_default (tests/py/test_lab.py) */
    const char *input, *data, *format, *out;
} common_opts;

#define COMMON_FLAGS(o, n_default)                                                                      \
    {"data", FLAG_STR, &(o).data, NULL, "CSV problem: header pi_ref,reward[,reward_hat][,length][,safety][,prompt], one row per response (prompt: frontier only)", 0}, \
    {"n", FLAG_COUNT, &(o).n, n_default, "responses per prompt when generating", 0},                         \
    {"pi-ref", FLAG_STR, &(o).gen.pi_ref_kind, "zipf", "generated pi_ref: zipf, dirichlet, uniform", 0},            \
    {"zipf-s", FLAG_FLOAT, &(o).gen.zipf_s, "1", "Zipf exponent: pi_ref(k) ∝ k^-s", 0},                         \
    {"dirichlet-alpha", FLAG_FLOAT, &(o).gen.dirichlet_alpha, "1", "symmetric Dirichlet concentration", 0},    \
    {"reward", FLAG_STR, &(o).gen.reward_kind, "gaussian", "generated reward: gaussian (sd = scale), uniform (+-scale)", 0}, \
    {"reward-scale", FLAG_FLOAT, &(o).gen.reward_scale, "1", "reward standard deviation / half-width", 0},     \
    {"seed", FLAG_COUNT, &(o).seed, FLAGS_DEFAULT_SEED, "RNG seed (same seed + threads -> same numbers)", 0},            \
    {"threads", FLAG_INT, &(o).threads, "0", "OpenMP threads (0 = default)", 0},                           \
    {"format", FLAG_STR, &(o).format, "csv", "output table format: csv or json", 0}
/* bias's alone: the one experiment that reads response lengths (the others listed them in --help
 * with their defaults, then refused them) */
#define LENGTH_FLAGS(o)                                                                                 \
    {"length-min", FLAG_INT, &(o).gen.length_min, "10", "generated response lengths: smallest", 0},            \
    {"length-max", FLAG_INT, &(o).gen.length_max, "200", "generated response lengths: largest", 0}

/* A flag whose value makes the run allocate more than the machine's memory, refused naming it
 * (the out-of-memory handler's line names no flag) */
static int beyond_ram(const char *flag, long value, double bytes, const char *what) {
    const double ram = fdpo_ram_bytes();
    if (ram > 0 && bytes > ram)
        return fdpo_error("--%s %ld: %s %.3g GB, more than this machine's %.3g GB", flag, value, what, bytes / 1e9,
                          ram / 1e9);
    return 0;
}

/* what an experiment reads of a problem beyond pi_ref and the reward: a CSV's `prompt` column
 * (several prompts; the others refuse it) and the response lengths (only bias has
 * --length-min/--length-max; the others draw the default lengths, which keeps the random stream
 * of the columns drawn after them); and whether it draws from --seed after the problem is
 * made (gap's noise, coverage's comparisons, check's --sampled runs): with --data the others
 * draw nothing, and their --seed is refused as the generator's flags are */
enum { READS_PROMPTS = 1, READS_LENGTHS = 2, DRAWS_AFTER_LOAD = 4 };
static int load_problem(const common_opts *o, const fdpo_flag *flags, size_t nf, fdpo_rng *rng, fdpo_lab_problem *p,
                        int reads) {
    const int prompts_ok = (reads & READS_PROMPTS) != 0;
    if (o->input) {
        if (flags_was_set(flags, nf, "n")) return fdpo_error("--n: not allowed with --data (the file sets the responses)");
        /* the generator's flags would be ignored: refused like --n (constrained's
         * --safety-correlation too; a flag a subcommand does not have is never set) */
        static const char *const gen_flags[] = {"pi-ref", "zipf-s", "dirichlet-alpha", "reward", "reward-scale",
                                                "length-min", "length-max", "safety-correlation"};
        const char *given = flags_first_set(flags, nf, FLAGS_NAMES(gen_flags));
        if (given)
            return fdpo_error("--%s: not allowed with --data (it shapes a generated problem; the file sets the problem)", given);
        if (!(reads & DRAWS_AFTER_LOAD) && flags_was_set(flags, nf, "seed"))
            return fdpo_error("--seed: not allowed with --data (it seeds a generated problem; the file sets the problem, "
                              "and this run draws nothing else at random)");
        double renorm;
        if (fdpo_lab_read_csv(o->input, p, &renorm)) return fdpo_error_context("--data");
        if (p->prompt_offset && !prompts_ok) {
            fdpo_lab_problem_free(p);
            return fdpo_error("--data %s: column 'prompt': this experiment solves one prompt; `fdpo lab frontier` "
                              "reads several (drop the column to pool the rows into one problem)", o->input);
        }
        if (renorm != 0)
            fdpo_log(FDPO_LOG_WARN, "%s: pi_ref sums to %.17g, renormalised to 1%s", o->input, renorm,
                     p->prompt_offset ? " (per prompt; the first prompt off by more than 1e-9)" : "");
        return 0;
    }
    /* pi_ref, reward and length alone take 24 bytes a response: more than the machine holds
     * ended in the out-of-memory handler's line, which names no flag */
    if (beyond_ram("n", o->n, 24.0 * (double)o->n, "the generated problem alone takes")) return -1;
    /* the other kinds' parameters would be ignored */
    const char *kind = o->gen.pi_ref_kind ? o->gen.pi_ref_kind : "zipf";
    if (flags_was_set(flags, nf, "zipf-s") && strcmp(kind, "zipf"))
        return fdpo_error("--zipf-s: only with --pi-ref zipf (this is --pi-ref %s)", kind);
    if (flags_was_set(flags, nf, "dirichlet-alpha") && strcmp(kind, "dirichlet"))
        return fdpo_error("--dirichlet-alpha: only with --pi-ref dirichlet (this is --pi-ref %s)", kind);
    fdpo_lab_gen gen = o->gen;
    if (!(reads & READS_LENGTHS)) {
        fdpo_lab_gen def;
        fdpo_lab_gen_default(&def);
        gen.length_min = def.length_min; gen.length_max = def.length_max;
    }
    return fdpo_lab_generate(&gen, (size_t)o->n, rng, p);
}

/* The checks learn from pairs of responses: a --data file of one row is named as the cause
 * (the library's message names --n, the generator's flag) */
static int check_needs_two(const common_opts *o, const fdpo_lab_problem *p) {
    if (o->input && p->n < 2)
        return fdpo_error("--data %s: the check needs at least 2 responses (the file has %zu)", o->input, p->n);
    return 0;
}

static int parse_divs(const char *spec, fdpo_divergence **out, size_t *count) {
    if (fdpo_divergence_parse_list(spec, out, count)) return fdpo_error_context("--divergence");
    for (size_t i = 0; i < *count; i++)   /* before any output */
        if (fdpo_lab_divergence_check(&(*out)[i])) { free(*out); *out = NULL; return fdpo_error_context("--divergence"); }
    return 0;
}

/* Every file an experiment writes (--out, --export-*) is claimed from its flags' parse to
 * cmd_lab's end (fdpo_out_file_claim), like every other command's outputs: a second run
 * naming the same file is refused instead of one silently replacing the other's table. */
#define LAB_MAX_OUTPUTS 8
static const char *lab_claimed[LAB_MAX_OUTPUTS];
static int lab_n_claimed;

/* The rules of every command's output file (eval_claim_out): not the --data input (the atomic
 * rename replaced it with only a warning), not "-" (a lab table goes to stdout without --out),
 * not a special file. */
static int claim_outputs(const fdpo_flag *flags, size_t n, const char *input) {
    const char *inputs[1][2] = {{"--data", input}};
    for (size_t i = 0; i < n; i++) {
        if (flags[i].type != FLAG_STR || (strcmp(flags[i].name, "out") && strncmp(flags[i].name, "export-", 7))) continue;
        const char *path = *(const char **)flags[i].dest;
        if (!path) continue;
        char flag[64];
        snprintf(flag, sizeof flag, "--%s", flags[i].name);
        if (lab_n_claimed == LAB_MAX_OUTPUTS) return fdpo_error("%s: more than %d output files", flag, LAB_MAX_OUTPUTS);
        if (eval_claim_out(flag, path, inputs, 1, 0)) return -1;
        lab_claimed[lab_n_claimed++] = path;
    }
    return 0;
}

#define PARSE_FLAGS(name, usage)                                                                     \
    int npos_;                                                                                       \
    char **pos_ = NULL;                                                                              \
    int prc_ = flags_parse("lab " name, usage, flags, NFLAGS(flags), argc, argv, &npos_, &pos_);     \
    if (prc_ == FLAGS_HELP) return 0;                                                                \
    if (prc_ != FLAGS_OK) return -1;                                                                 \
    if (npos_ > 0) { fdpo_error("unexpected argument '%s' (lab " name " takes flags only; --help lists them)", pos_[0]); free(pos_); return -1; } \
    free(pos_);                                                                                      \
    o.input = o.data; /* --input is an alias of --data (cli/flags.c) */                               \
    if (claim_outputs(flags, NFLAGS(flags), o.input)) return -1;                                     \
    fdpo_set_threads((int)o.threads)

/* solve's and constrained's --out: pi_ref,reward[,safety] and per divergence its pi (and, with
 * steps, the stepwise pi beside it): "pi[,pi_stepwise]" for one divergence, "pi_<name>[,...]"
 * for several; pis and steps are [nd, n] */
static void write_pi_csv(FILE *f, const fdpo_lab_problem *p, int with_safety, const fdpo_divergence *divs, size_t nd,
                         const double *pis, const double *steps) {
    fprintf(f, with_safety ? "pi_ref,reward,safety" : "pi_ref,reward");
    for (size_t k = 0; k < nd; k++) {
        char name[64];
        fdpo_divergence_name(&divs[k], name, sizeof name);
        if (nd == 1) fprintf(f, steps ? ",pi,pi_stepwise" : ",pi");
        else if (steps) fprintf(f, ",pi_%s,pi_stepwise_%s", name, name);
        else fprintf(f, ",pi_%s", name);
    }
    fputc('\n', f);
    for (size_t i = 0; i < p->n; i++) {
        fprintf(f, "%.17g,%.17g", p->pi_ref[i], p->reward[i]);
        if (with_safety) fprintf(f, ",%.17g", p->safety[i]);
        for (size_t k = 0; k < nd; k++) {
            fprintf(f, ",%.17g", pis[k * p->n + i]);
            if (steps) fprintf(f, ",%.17g", steps[k * p->n + i]);
        }
        fputc('\n', f);
    }
}

/* ---------------- solve ---------------- */

static int lab_solve(int argc, char **argv) {
    common_opts o;
    const char *divspec, *pi_out;
    double beta;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "1000"),
        {"divergence", FLAG_STR, &divspec, "all", "comma list of rkl, fkl, js, alpha:A, tv, chi2 (all = rkl,fkl,js,alpha:0.5,tv,chi2)", 0},
        {"beta", FLAG_FLOAT, &beta, "0.1", "regularisation strength beta > 0", 0},
        {"out", FLAG_STR, &pi_out, NULL, "write pi_ref,reward,pi (one column pi_<name> per divergence if several) to this CSV", 0},
    };
    o.out = NULL;
    PARSE_FLAGS("solve", "fdpo lab solve [flags]");
    if (fdpo_beta_check(beta)) return -1;   /* before the table's header reaches stdout */
    fdpo_divergence *divs;
    size_t nd;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem p;
    if (load_problem(&o, flags, NFLAGS(flags), &rng, &p, 0)) { free(divs); return -1; }
    fdpo_lab_prepared pp;
    fdpo_lab_prepare(&pp, p.pi_ref, p.reward, p.n);
    double *pis = fdpo_malloc(nd * p.n * sizeof(double));
    static const char *cols[] = {"divergence", "beta", "lambda", "support", "support_lost", "expected_reward",
                                 "entropy", "kl", "f_divergence", "objective", "iterations"};
    table t;
    /* --out is opened first: a file that cannot be written fails before the table reaches stdout */
    fdpo_atomic_file af = {0};
    int rc = 0, opened = 0;
    if (pi_out && fdpo_atomic_open(&af, pi_out)) rc = fdpo_error_context("--out %s", pi_out);
    if (rc == 0) { rc = table_open(&t, NULL, o.format, cols, 11); opened = rc == 0; }
    for (size_t k = 0; rc == 0 && k < nd; k++) {
        fdpo_lab_result r;
        if ((rc = fdpo_lab_solve(&pp, &divs[k], beta, pis + k * p.n, &r))) break;
        char name[64];
        fdpo_divergence_name(&divs[k], name, sizeof name);
        table_str(&t, name); table_num(&t, beta); table_num(&t, r.lambda);
        table_int(&t, (long long)r.support); table_int(&t, (long long)(p.n - r.support));
        table_num(&t, r.expected_reward); table_num(&t, r.entropy); table_num(&t, r.kl);
        table_num(&t, r.f_divergence); table_num(&t, r.objective); table_int(&t, r.iterations);
        table_end_row(&t);
    }
    if (rc == 0 && af.f) write_pi_csv(af.f, &p, 0, divs, nd, pis, NULL);
    rc = outputs_finish(rc, &t, opened, NULL, 0, &af, NULL);
    free(pis); free(divs);
    fdpo_lab_prepared_free(&pp);
    fdpo_lab_problem_free(&p);
    return rc;
}

/* ---------------- frontier ---------------- */

static int lab_frontier(int argc, char **argv) {
    common_opts o;
    const char *divspec, *betalist;
    fdpo_lab_beta_grid_opts grid;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "1000"),
        {"divergence", FLAG_STR, &divspec, "all", "comma list of divergences (all = rkl,fkl,js,alpha:0.5,tv,chi2)", 0},
        {"betas", FLAG_STR, &betalist, NULL, "comma list of betas (overrides the log grid)", 0},
        {"beta-min", FLAG_FLOAT, &grid.beta_min, "0.01", "log-spaced beta grid: smallest", 0},
        {"beta-max", FLAG_FLOAT, &grid.beta_max, "10", "log-spaced beta grid: largest", 0},
        {"n-betas", FLAG_INT, &grid.n_betas, "50", "log-spaced beta grid: points", 0},
        {"out", FLAG_STR, &o.out, NULL, "write the table here instead of stdout", 0},
    };
    PARSE_FLAGS("frontier", "fdpo lab frontier [flags]");
    fdpo_divergence *divs;
    size_t nd, nbeta;
    double *betas;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    static const char *const grid_flags[] = {"beta-min", "beta-max", "n-betas"};
    const char *given = betalist ? flags_first_set(flags, NFLAGS(flags), FLAGS_NAMES(grid_flags)) : NULL;
    if (given) {
        free(divs);
        return fdpo_error("--%s: has no effect with --betas (the list replaces the log grid)", given);
    }
    int grc = betalist ? flags_number_list("betas", betalist, FLAGS_LIST_POSITIVE | FLAGS_LIST_DISTINCT, &betas, &nbeta)   /* "": an empty list */
                                    : fdpo_lab_beta_grid(&grid, &betas, &nbeta);
    if (grc) { free(divs); return -1; }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem p;
    if (load_problem(&o, flags, NFLAGS(flags), &rng, &p, READS_PROMPTS)) { free(divs); free(betas); return -1; }
    /* one prepared problem per prompt (a CSV with a prompt column), else the whole set */
    size_t np;
    fdpo_lab_prepared *pp = fdpo_lab_prepare_prompts(&p, &np);
    size_t ntask = nd * nbeta;
    fdpo_lab_result *res = fdpo_calloc(ntask, sizeof *res);
    static const char *cols[] = {"divergence", "beta", "expected_reward", "entropy", "kl", "f_divergence", "support"};
    table t;
    int rc = fdpo_lab_frontier_prompts(pp, np, divs, nd, betas, nbeta, res);
    if (rc == 0) rc = table_open(&t, o.out, o.format, cols, 7);
    for (size_t k = 0; rc == 0 && k < ntask; k++) {
        char name[64];
        fdpo_divergence_name(&divs[k / nbeta], name, sizeof name);
        table_str(&t, name); table_num(&t, betas[k % nbeta]); table_num(&t, res[k].expected_reward);
        table_num(&t, res[k].entropy); table_num(&t, res[k].kl); table_num(&t, res[k].f_divergence);
        table_int(&t, (long long)res[k].support);
        table_end_row(&t);
    }
    if (rc == 0) rc = table_finish(&t, 1, rc);
    free(res); free(divs); free(betas);
    fdpo_lab_prepared_free_prompts(pp, np);
    fdpo_lab_problem_free(&p);
    return rc;
}

/* ---------------- gap ---------------- */

static int lab_gap(int argc, char **argv) {
    common_opts o;
    const char *divspec, *betalist, *noiselist, *export_path;
    long prompts;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "1000"),
        {"prompts", FLAG_COUNT, &prompts, "4", "independent prompts (problems) averaged over (1 with --data)", 0},
        {"divergence", FLAG_STR, &divspec, "all", "comma list of divergences", 0},
        {"betas", FLAG_STR, &betalist, "0.01,0.03,0.1,0.3,1", "comma list of betas", 0},
        {"noise", FLAG_STR, &noiselist, "0.1", "comma list of reward-noise sds: r_hat = r + noise * N(0,1) (not with a --data that has reward_hat)", 0},
        {"export-problem", FLAG_STR, &export_path, NULL, "write noise,prompt,pi_ref,reward,reward_hat (the exact inputs) to this CSV", 0},
        {"out", FLAG_STR, &o.out, NULL, "write the table here instead of stdout", 0},
    };
    PARSE_FLAGS("gap", "fdpo lab gap [flags]");
    if (prompts < 1) return fdpo_error("--prompts: must be >= 1 (got %ld)", prompts);
    if (o.input && flags_was_set(flags, NFLAGS(flags), "prompts") && prompts != 1)
        return fdpo_error("--prompts: --data holds one prompt (got %ld)", prompts);
    if (o.input) prompts = 1;
    if (beyond_ram("prompts", prompts, (double)prompts * (24.0 * (double)o.n + sizeof(fdpo_lab_problem)), "the generated problems take")) return -1;
    fdpo_divergence *divs = NULL;
    double *betas = NULL, *noises = NULL;
    size_t nd, nbeta, nnoise;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    if (flags_number_list("betas", betalist, FLAGS_LIST_POSITIVE | FLAGS_LIST_DISTINCT, &betas, &nbeta) || flags_number_list("noise", noiselist, FLAGS_LIST_NONNEG | FLAGS_LIST_DISTINCT, &noises, &nnoise)) {
        free(divs); free(betas); return -1;
    }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem *P = fdpo_calloc((size_t)prompts, sizeof *P);
    int rc = 0;
    for (long x = 0; rc == 0 && x < prompts; x++) rc = load_problem(&o, flags, NFLAGS(flags), &rng, &P[x], DRAWS_AFTER_LOAD);
    int from_file = o.input && P[0].reward_hat;
    if (from_file) nnoise = 1;
    if (rc == 0 && from_file && flags_was_set(flags, NFLAGS(flags), "noise"))
        rc = fdpo_error("--noise: has no effect: --data %s has a reward_hat column, which is the noisy reward", o.input);
    if (rc == 0 && from_file && flags_was_set(flags, NFLAGS(flags), "seed"))
        rc = fdpo_error("--seed: has no effect: --data %s has a reward_hat column, so no noise is drawn", o.input);
    static const char *cols[] = {"noise", "divergence", "beta", "reward_gap", "objective_gap", "bound", "bound_held"};
    table t;
    fdpo_atomic_file ex = {0};
    /* the export first: a file that cannot be written fails before the table reaches stdout */
    if (rc == 0) rc = export_open(&ex, "export-problem", export_path, "noise,prompt,pi_ref,reward,reward_hat");
    int table_opened = 0;
    if (rc == 0) { rc = table_open(&t, o.out, o.format, cols, 7); table_opened = rc == 0; }
    for (size_t s = 0; rc == 0 && s < nnoise; s++) {
        /* r_hat per prompt: the file's, or r + noise (fdpo_lab_gap_noise) */
        double **rh = fdpo_calloc((size_t)prompts, sizeof *rh);
        for (long x = 0; x < prompts; x++) {
            rh[x] = fdpo_malloc(P[x].n * sizeof(double));
            if (from_file) memcpy(rh[x], P[x].reward_hat, P[x].n * sizeof(double));
        }
        if (!from_file) rc = fdpo_lab_gap_noise(P, (size_t)prompts, noises[s], (uint64_t)o.seed, s, rh);
        for (long x = 0; ex.f && rc == 0 && x < prompts; x++)
            for (size_t i = 0; i < P[x].n; i++)
                fprintf(ex.f, "%.17g,%ld,%.17g,%.17g,%.17g\n", from_file ? NAN : noises[s], x, P[x].pi_ref[i], P[x].reward[i], rh[x][i]);
        for (size_t k = 0; rc == 0 && k < nd; k++) {
            for (size_t b = 0; rc == 0 && b < nbeta; b++) {
                fdpo_lab_gap_row avg;
                int held;
                if ((rc = fdpo_lab_gap_mean(&divs[k], betas[b], P, (const double *const *)rh, (size_t)prompts, &avg, &held))) break;
                char name[64];
                fdpo_divergence_name(&divs[k], name, sizeof name);
                if (from_file) table_str(&t, "input"); else table_num(&t, noises[s]);
                table_str(&t, name); table_num(&t, betas[b]);
                table_num(&t, avg.reward_gap); table_num(&t, avg.objective_gap); table_num(&t, avg.bound);
                table_bool(&t, held);
                table_end_row(&t);
            }
        }
        for (long x = 0; x < prompts; x++) free(rh[x]);
        free(rh);
    }
    rc = outputs_finish(rc, &t, table_opened, NULL, 0, &ex, NULL);
    for (long x = 0; x < prompts; x++) fdpo_lab_problem_free(&P[x]);
    free(P); free(divs); free(betas); free(noises);
    return rc;
}

/* ---------------- coverage ---------------- */

typedef struct { FILE *cmp, *fit; } coverage_export;
static void coverage_on_fit(void *ctx, size_t m, size_t x, const size_t *w, const size_t *l, const double *theta, size_t n) {
    const coverage_export *e = ctx;
    if (e->cmp) for (size_t k = 0; k < m; k++) fprintf(e->cmp, "%zu,%zu,%zu,%zu\n", m, x, w[k], l[k]);
    if (e->fit) for (size_t i = 0; i < n; i++) fprintf(e->fit, "%zu,%zu,%zu,%.17g\n", m, x, i, theta[i]);
}

static int lab_coverage(int argc, char **argv) {
    common_opts o;
    const char *divspec, *nlist, *policy, *datadiv, *export_cmp, *export_fit;
    long prompts;
    double beta, mixture, ridge;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "20"),
        {"prompts", FLAG_COUNT, &prompts, "8", "independent prompts averaged over (1 with --data)", 0},
        {"divergence", FLAG_STR, &divspec, "all", "comma list of divergences", 0},
        {"beta", FLAG_FLOAT, &beta, "0.1", "regularisation strength beta > 0", 0},
        {"comparisons", FLAG_STR, &nlist, "10,30,100,300,1000,3000", "comma list of N, comparisons per prompt", 0},
        {"data-policy", FLAG_STR, &policy, "ref", "who generates compared pairs: ref, optimal, uniform, mixture", 0},
        {"data-divergence", FLAG_STR, &datadiv, "rkl", "the f whose pi* (at --beta) 'optimal' means", 0},
        {"mixture", FLAG_FLOAT, &mixture, "0.5", "mixture policy: (1 - W) pi_ref + W pi*", 0},
        {"ridge", FLAG_FLOAT, &ridge, "1e-3", "L2 ridge of the Bradley-Terry fit (identifiability)", 0},
        {"export-comparisons", FLAG_STR, &export_cmp, NULL, "write n_comparisons,prompt,winner,loser to this CSV", 0},
        {"export-fit", FLAG_STR, &export_fit, NULL, "write n_comparisons,prompt,response,reward_hat to this CSV", 0},
        {"out", FLAG_STR, &o.out, NULL, "write the table here instead of stdout", 0},
    };
    PARSE_FLAGS("coverage", "fdpo lab coverage [flags]");
    fdpo_lab_coverage_opts co;
    fdpo_lab_coverage_opts_default(&co);
    if (fdpo_lab_data_policy_parse(policy, &co.policy)) return -1;
    /* flags the data policy does not use are refused, not ignored */
    if (co.policy != FDPO_LAB_DATA_MIXTURE && flags_was_set(flags, NFLAGS(flags), "mixture"))
        return fdpo_error("--mixture: only used by --data-policy mixture (got --data-policy %s)", policy);
    if ((co.policy == FDPO_LAB_DATA_REF || co.policy == FDPO_LAB_DATA_UNIFORM) && flags_was_set(flags, NFLAGS(flags), "data-divergence"))
        return fdpo_error("--data-divergence: only used by --data-policy optimal or mixture (got --data-policy %s)", policy);
    co.beta = beta; co.mixture = mixture; co.ridge = ridge; co.seed = (uint64_t)o.seed;
    if (o.input && flags_was_set(flags, NFLAGS(flags), "prompts") && prompts != 1)
        return fdpo_error("--prompts: --data holds one prompt (got %ld)", prompts);
    if (o.input) prompts = 1;
    if (beyond_ram("prompts", prompts, (double)prompts * (24.0 * (double)o.n + sizeof(fdpo_lab_problem)), "the generated problems take")) return -1;
    fdpo_divergence ddiv;
    if (fdpo_divergence_parse(datadiv, &ddiv)) return fdpo_error_context("--data-divergence");
    if (fdpo_lab_divergence_check(&ddiv)) return fdpo_error_context("--data-divergence");
    co.data_div = ddiv;
    fdpo_divergence *divs = NULL;
    double *ns = NULL;
    size_t nd, nn;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    if (flags_number_list("comparisons", nlist, FLAGS_LIST_COUNT | FLAGS_LIST_DISTINCT, &ns, &nn)) { free(divs); return -1; }
    size_t *nsz = fdpo_malloc(nn * sizeof *nsz);
    for (size_t a = 0; a < nn; a++) nsz[a] = (size_t)ns[a];
    /* the library's rules before the problems are made and the table's header is written */
    free(ns);   /* nsz holds them from here on */
    if (fdpo_lab_coverage_check(&co, (size_t)prompts, nsz, nn)) { free(divs); free(nsz); return -1; }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem *P = fdpo_calloc((size_t)prompts, sizeof *P);
    int rc = 0;
    for (long x = 0; rc == 0 && x < prompts; x++) rc = load_problem(&o, flags, NFLAGS(flags), &rng, &P[x], DRAWS_AFTER_LOAD);
    fdpo_atomic_file ec = {0}, ef = {0};
    table t;
    int opened = 0;
    if (rc == 0) rc = export_open(&ec, "export-comparisons", export_cmp, "n_comparisons,prompt,winner,loser");
    if (rc == 0) rc = export_open(&ef, "export-fit", export_fit, "n_comparisons,prompt,response,reward_hat");
    static const char *cols[] = {"data_policy", "n_comparisons", "divergence", "beta", "reward_gap",
                                 "objective_gap", "pistar_coverage", "fit_rmse"};
    if (rc == 0) { rc = table_open(&t, o.out, o.format, cols, 8); opened = rc == 0; }
    coverage_export ex = {ec.f, ef.f};
    co.on_fit = coverage_on_fit;
    co.ctx = &ex;
    fdpo_lab_coverage_row *acc = fdpo_calloc(nn * nd, sizeof *acc);
    if (rc == 0) rc = fdpo_lab_coverage(&co, P, (size_t)prompts, nsz, nn, divs, nd, acc);
    for (size_t a = 0; rc == 0 && a < nn; a++)
        for (size_t k = 0; k < nd; k++) {
            char name[64];
            fdpo_divergence_name(&divs[k], name, sizeof name);
            const fdpo_lab_coverage_row *row = &acc[a * nd + k];
            table_str(&t, policy); table_int(&t, (long long)nsz[a]); table_str(&t, name); table_num(&t, beta);
            table_num(&t, row->reward_gap); table_num(&t, row->objective_gap); table_num(&t, row->pistar_coverage); table_num(&t, row->fit_rmse);
            table_end_row(&t);
        }
    rc = outputs_finish(rc, &t, opened, NULL, 0, &ec, &ef);
    for (long x = 0; x < prompts; x++) fdpo_lab_problem_free(&P[x]);
    free(P); free(divs); free(nsz); free(acc);
    return rc;
}

/* ---------------- bias ---------------- */

static int lab_bias(int argc, char **argv) {
    common_opts o;
    const char *divspec, *betalist, *biaslist;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "1000"),
        LENGTH_FLAGS(o),
        {"divergence", FLAG_STR, &divspec, "all", "comma list of divergences", 0},
        {"betas", FLAG_STR, &betalist, "0.03,0.1,0.3,1", "comma list of betas", 0},
        {"bias", FLAG_STR, &biaslist, "0.005", "comma list of b: r_hat = r + b * length", 0},
        {"out", FLAG_STR, &o.out, NULL, "write the table here instead of stdout", 0},
    };
    PARSE_FLAGS("bias", "fdpo lab bias [flags]");
    fdpo_divergence *divs = NULL;
    double *betas = NULL, *bs = NULL;
    size_t nd, nbeta, nb;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    if (flags_number_list("betas", betalist, FLAGS_LIST_POSITIVE | FLAGS_LIST_DISTINCT, &betas, &nbeta) || flags_number_list("bias", biaslist, FLAGS_LIST_NONNEG | FLAGS_LIST_DISTINCT, &bs, &nb)) { free(divs); free(betas); return -1; }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem p;
    if (load_problem(&o, flags, NFLAGS(flags), &rng, &p, READS_LENGTHS)) { free(divs); free(betas); free(bs); return -1; }
    int rc = 0;
    if (!p.length) rc = fdpo_error("--data %s: the bias experiment needs a 'length' column", o.input);
    static const char *cols[] = {"bias", "divergence", "beta", "length_pistar", "length_pihat", "length_increase", "reward_gap"};
    table t;
    int opened = 0;
    if (rc == 0) { rc = table_open(&t, o.out, o.format, cols, 7); opened = rc == 0; }
    for (size_t s = 0; rc == 0 && s < nb; s++)
        for (size_t k = 0; rc == 0 && k < nd; k++)
            for (size_t b = 0; rc == 0 && b < nbeta; b++) {
                fdpo_lab_bias_row row;
                if ((rc = fdpo_lab_bias(&divs[k], betas[b], bs[s], &p, &row))) break;
                char name[64];
                fdpo_divergence_name(&divs[k], name, sizeof name);
                table_num(&t, bs[s]); table_str(&t, name); table_num(&t, betas[b]);
                table_num(&t, row.length_pistar); table_num(&t, row.length_pihat); table_num(&t, row.length_increase);
                table_num(&t, row.reward_gap);
                table_end_row(&t);
            }
    rc = table_finish(&t, opened, rc);
    free(divs); free(betas); free(bs);
    fdpo_lab_problem_free(&p);
    return rc;
}

/* ---------------- check --method (src/lab/algos.c) ---------------- */

/* Offline f-DPO, online f-DPO, f-RLOO, f-GRPO and offline KTO on the tabular problem, each
 * against pi* (and KTO against its own limit). */
static int lab_check_method(int argc, char **argv) {
    common_opts o;
    const char *divspec, *methodspec, *export_pi, *labels_name;
    double beta, lr, grpo_eps, label_threshold = NAN, w_d, w_u;
    long pair_top, steps, k, k_removed = 0;
    int sampled;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "6"),
        {"method", FLAG_STR, &methodspec, "dpo,online,rloo,grpo", "comma list of algorithms: dpo, online, rloo, grpo, kto", 0},
        {"divergence", FLAG_STR, &divspec, "rkl,fkl,js,alpha:0.5", "comma list of admissible divergences", 0},
        {"beta", FLAG_FLOAT, &beta, "0.5", "regularisation strength beta > 0", 0},
        {"sampled", FLAG_BOOL, &sampled, "0", "sample pairs/groups (fdpo_rng) instead of exact expectations", 0},
        {"pair-top", FLAG_COUNT, &pair_top, "0", "dpo: offline pairs among the N (<= n) most likely responses under pi_ref (0 = n/2)", 0},
        {"steps", FLAG_COUNT, &steps, "0", "online/rloo/grpo/kto iterations (0 = 100000 sampled, 200000 exact, 20000 exact grpo and kto)", 0},
        {"group-size", FLAG_INT, &k, "4", "samples per step: online pairs, rloo/grpo group size (online and rloo: with --sampled only)", 0},
        {"k", FLAG_INT, &k_removed, NULL, "removed: --group-size (here --k was the group size; elsewhere the old --n)", 0},
        {"lr", FLAG_FLOAT, &lr, "0", "step size (0 = the method's default: online 5 exact / 1 sampled, rloo 1, grpo 0.05, kto 5); exact online/rloo halve it where it does not lower the exact loss", 0},
        {"grpo-eps", FLAG_FLOAT, &grpo_eps, "1e-4", "GRPO's std epsilon (TRL's default)", 0},
        {"labels", FLAG_STR, &labels_name, "bt", "kto labels: bt (P(desirable) = sigmoid(r - threshold)) or threshold (r > threshold)", 0},
        {"label-threshold", FLAG_FLOAT, &label_threshold, NULL, "kto: the labels' reward threshold (default E_pi_ref[r])", 0},
        {"desirable-weight", FLAG_FLOAT, &w_d, "1", "kto: weight of desirable examples (TRL desirable_weight)", 0},
        {"undesirable-weight", FLAG_FLOAT, &w_u, "1", "kto: weight of undesirable examples (TRL undesirable_weight)", 0},
        {"export-policy", FLAG_STR, &export_pi, NULL, "write every final policy as CSV method,divergence,response,pi", 0},
        {"out", FLAG_STR, &o.out, NULL, "write the table here instead of stdout", 0},
    };
    PARSE_FLAGS("check", "fdpo lab check --method LIST [flags]");
    /* an old script's --k would otherwise be the alias of --n: another problem size, silently */
    if (flags_was_set(flags, NFLAGS(flags), "k")) return fdpo_error("--k (-k): renamed --group-size in lab check --method (--n is the number of responses)");
    (void)k_removed;
    fdpo_lab_labels labels;
    if (fdpo_lab_labels_parse(labels_name, &labels)) return -1;
    if (!(lr >= 0) || !isfinite(lr)) return fdpo_error("--lr: must be > 0, or 0 for the method default (got %g)", lr);
    fdpo_divergence *divs;
    size_t nd;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    fdpo_lab_method methods[FDPO_LAB_NMETHODS];
    size_t nm = 0;
    char *ms = fdpo_strdup(methodspec), *save = NULL;
    /* empty items and repeats refused as in every lab list (--divergence, --betas): ",dpo,,online"
     * ran dpo,online and "kto,kto" printed kto's row twice; with no repeat, at most
     * FDPO_LAB_NMETHODS fit */
    int rc = flags_list_empty_item("method", methodspec);
    for (char *tok = strtok_r(ms, ",", &save); tok && rc == 0; tok = strtok_r(NULL, ",", &save)) {
        fdpo_lab_method m;
        if ((rc = fdpo_lab_method_parse(tok, &m))) break;
        for (size_t a = 0; rc == 0 && a < nm; a++)
            if (methods[a] == m) rc = fdpo_error("--method: %s given twice in '%s'", tok, methodspec);
        if (rc == 0) methods[nm++] = m;
    }
    free(ms);
    if (rc == 0 && nm == 0) rc = fdpo_error("--method: empty list");
    /* a method's own flags, given where no listed method reads them, were ignored */
#define M(x) (1u << FDPO_LAB_##x)
    /* refusers: methods whose own check refuses the flag with its reason (kto's --sampled) */
    static const struct { const char *flag; unsigned readers, refusers; } method_flags[] = {
        {"pair-top", M(DPO), 0}, {"grpo-eps", M(GRPO), 0}, {"steps", M(ONLINE) | M(RLOO) | M(GRPO) | M(KTO), 0},
        {"lr", M(ONLINE) | M(RLOO) | M(GRPO) | M(KTO), 0}, {"sampled", M(ONLINE) | M(RLOO) | M(GRPO), M(KTO)},
        {"group-size", M(ONLINE) | M(RLOO) | M(GRPO), 0}, {"labels", M(KTO), 0}, {"label-threshold", M(KTO), 0},
        {"desirable-weight", M(KTO), 0}, {"undesirable-weight", M(KTO), 0},
    };
#undef M
    unsigned listed = 0;
    for (size_t a = 0; a < nm; a++) listed |= 1u << methods[a];
    for (size_t f = 0; rc == 0 && f < sizeof method_flags / sizeof method_flags[0]; f++) {
        if (!flags_was_set(flags, NFLAGS(flags), method_flags[f].flag) || (listed & (method_flags[f].readers | method_flags[f].refusers))) continue;
        char readers[64] = "";
        int n_readers = 0;
        for (int m = 0; m < FDPO_LAB_NMETHODS; m++)
            if (method_flags[f].readers & (1u << m))
                snprintf(readers + strlen(readers), sizeof readers - strlen(readers), "%s%s", n_readers++ ? "," : "",
                         fdpo_lab_method_name((fdpo_lab_method)m));
        rc = fdpo_error("--%s: only --method %s use%s it (--method %s)", method_flags[f].flag, readers,
                        n_readers > 1 ? "" : "s", methodspec);
    }
    /* exact online and exact rloo take their expectations per response (algo_uses_groups in
     * src/lab/algos.c): only their sampled runs, and grpo (its exact average is over all n^k
     * groups), read the group size */
    if (rc == 0 && !sampled && !(listed & (1u << FDPO_LAB_GRPO)) && flags_was_set(flags, NFLAGS(flags), "group-size"))
        rc = fdpo_error("--group-size: only the sampled online/rloo runs and grpo use it (give --sampled; --method %s)",
                        methodspec);
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem p = {0};
    if (rc == 0) rc = load_problem(&o, flags, NFLAGS(flags), &rng, &p, sampled ? DRAWS_AFTER_LOAD : 0);
    if (rc == 0) rc = check_needs_two(&o, &p);
    if (rc) { free(divs); fdpo_lab_problem_free(&p); return -1; }
    fdpo_lab_prepared pp;
    fdpo_lab_prepare(&pp, p.pi_ref, p.reward, p.n);
    static const char *cols[] = {"method", "variant", "divergence", "beta", "max_abs_diff", "objective_gap",
                                 "uncovered_mass", "samples", "iterations", "target_diff", "z0", "undesirable_mass"};
    static const char *pi_cols[] = {"method", "divergence", "response", "pi"};
    /* every run's options, validated by the library (fdpo_lab_algo_validate_problem) before anything is
     * written: a bad --group-size printed the table's header to stdout, then failed */
    fdpo_lab_algo_opts *aos = fdpo_malloc(nm * nd * sizeof *aos);
    for (size_t a = 0; a < nm; a++)
        for (size_t d = 0; d < nd; d++) {
            /* the method's defaults where a flag is 0 (--pair-top, --steps, --lr) */
            fdpo_lab_algo_opts *ao = &aos[a * nd + d];
            fdpo_lab_algo_opts_default(ao, methods[a], !sampled, p.n);
            ao->div = divs[d];
            ao->beta = beta;
            if (pair_top) ao->pair_top = (size_t)pair_top;
            if (steps) ao->steps = steps;
            if (lr > 0) ao->lr = lr;
            ao->k = k;
            ao->grpo_eps = grpo_eps;
            ao->seed = (uint64_t)o.seed;
            ao->labels = labels;
            ao->label_threshold = label_threshold;
            ao->desirable_weight = w_d;
            ao->undesirable_weight = w_u;
            if (rc == 0) rc = fdpo_lab_algo_validate_problem(ao, &pp);
        }
    table t, tp;
    double *pi = fdpo_malloc(p.n * sizeof(double));
    int opened = 0, opened_pi = 0;
    if (rc == 0 && export_pi) opened_pi = (rc = table_open(&tp, export_pi, "csv", pi_cols, 4)) == 0;
    if (rc == 0) opened = (rc = table_open(&t, o.out, o.format, cols, 12)) == 0;
    for (size_t a = 0; rc == 0 && a < nm; a++)
        for (size_t d = 0; rc == 0 && d < nd; d++) {
            const fdpo_lab_algo_opts *ao = &aos[a * nd + d];
            fdpo_lab_algo_result res;
            if ((rc = fdpo_lab_algo_run(&pp, ao, pi, &res))) break;
            char name[64];
            fdpo_divergence_name(&divs[d], name, sizeof name);
            for (size_t i = 0; opened_pi && i < p.n; i++) {
                table_str(&tp, fdpo_lab_method_name(methods[a])); table_str(&tp, name);
                table_int(&tp, (long long)i); table_num(&tp, pi[i]);
                table_end_row(&tp);
            }
            table_str(&t, fdpo_lab_method_name(methods[a]));
            table_str(&t, fdpo_lab_algo_variant(ao));
            table_str(&t, name); table_num(&t, beta);
            table_num(&t, res.max_abs_diff); table_num(&t, res.objective_gap); table_num(&t, res.uncovered_mass);
            table_int(&t, res.samples); table_int(&t, res.iterations);
            table_num(&t, res.target_diff); table_num(&t, res.z0); table_num(&t, res.undesirable_mass);
            table_end_row(&t);
            /* an exact online/rloo run that ran out of --steps, or stalled, ends short of its
             * limit: its row is not the method's verdict, so say it (exact grpo's decaying step
             * never meets the test in its default steps: docs/lab.md says so, not every row) */
            const int iterative = ao->exact && (methods[a] == FDPO_LAB_ONLINE || methods[a] == FDPO_LAB_RLOO);
            if (iterative && res.stalled)
                fdpo_log(FDPO_LOG_WARN, "--method %s --divergence %s --beta %g: the exact run stopped after %ld steps, "
                         "where no step lowers the exact loss beyond its rounding (step %g at the end): its "
                         "max_abs_diff is as close as the loss resolves pi* at this beta, not the method's limit",
                         fdpo_lab_method_name(methods[a]), name, beta, res.iterations, res.final_lr);
            else if (iterative && !res.converged)
                fdpo_log(FDPO_LOG_WARN, "--method %s --divergence %s --beta %g: the exact run did not converge in "
                         "%ld steps (--steps %ld; step %g at the end): its max_abs_diff is where it stopped, not the "
                         "method's limit; raise --steps (or --lr: a step too long for the exact loss is halved)",
                         fdpo_lab_method_name(methods[a]), name, beta, res.iterations, ao->steps, res.final_lr);
        }
    rc = outputs_finish(rc, &tp, opened_pi, &t, opened, NULL, NULL);
    free(pi);
    free(aos);
    free(divs);
    fdpo_lab_prepared_free(&pp);
    fdpo_lab_problem_free(&p);
    return rc;
}

/* ---------------- check ---------------- */

static int lab_check(int argc, char **argv) {
    common_opts o;
    const char *divspec, *lossname, *export_policy, *method_listed; /* --method dispatches below; listed for --help */
    double beta, smoothing, noise;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "6"),
        {"divergence", FLAG_STR, &divspec, "rkl,fkl,js,alpha:0.3,alpha:0.5,alpha:0.7", "comma list of admissible divergences", 0},
        {"beta", FLAG_FLOAT, &beta, "0.5", "regularisation strength beta > 0", 0},
        {"loss", FLAG_STR, &lossname, "sigmoid", "preference loss: sigmoid, robust, hinge, ipo", 0},
        {"label-smoothing", FLAG_FLOAT, &smoothing, "0", "label smoothing e of sigmoid (cDPO) / robust", 0},
        {"label-noise", FLAG_FLOAT, &noise, "0", "labels flipped at this rate in the expected loss", 0},
        {"export-policy", FLAG_STR, &export_policy, NULL, "write divergence,response,pi_ref,reward,pi_theta (the trained policy) to this CSV", 0},
        {"method", FLAG_STR, &method_listed, NULL, "dpo,online,rloo,grpo,kto: algorithm checks instead (see --method x --help)", 0},
        {"out", FLAG_STR, &o.out, NULL, "write the table here instead of stdout", 0},
    };
    /* the algorithm checks (src/lab/algos.c), whose flags differ: --method on the command line
     * or a --config file's method key (it was refused there), not another flag's value
     * ("--out --method" writes a file named --method) */
    if (flags_given("lab check", flags, NFLAGS(flags), argc, argv, "method")) return lab_check_method(argc, argv);
    PARSE_FLAGS("check", "fdpo lab check [flags]");
    (void)method_listed;
    fdpo_pref_loss L = {0};
    if (fdpo_loss_parse(lossname, &L.kind)) return -1;
    L.beta = beta;
    L.label_smoothing = smoothing;
    fdpo_divergence *divs;
    size_t nd;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    for (size_t k = 0; k < nd; k++) {
        L.div = divs[k];
        if (fdpo_lab_check_loss_check(&L)) { free(divs); return -1; }
    }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem p;
    if (load_problem(&o, flags, NFLAGS(flags), &rng, &p, 0)) { free(divs); return -1; }
    if (check_needs_two(&o, &p)) { free(divs); fdpo_lab_problem_free(&p); return -1; }
    /* the library's refusals (--label-noise, --n) and the export before the table reaches stdout */
    int rc = fdpo_lab_check_validate(&L, noise, p.n);
    fdpo_lab_prepared pp;
    fdpo_lab_prepare(&pp, p.pi_ref, p.reward, p.n);
    static const char *cols[] = {"divergence", "beta", "loss", "max_abs_diff", "final_loss", "grad_norm", "iterations"};
    table t;
    fdpo_atomic_file ep = {0};
    if (rc == 0) rc = export_open(&ep, "export-policy", export_policy, "divergence,response,pi_ref,reward,pi_theta");
    int opened = 0;
    if (rc == 0) { rc = table_open(&t, o.out, o.format, cols, 7); opened = rc == 0; }
    double *pi_theta = fdpo_malloc(p.n * sizeof(double));
    for (size_t k = 0; rc == 0 && k < nd; k++) {
        L.div = divs[k];
        fdpo_lab_check_result cr;
        if ((rc = fdpo_lab_check(&pp, &L, noise, pi_theta, &cr))) break;
        char name[64];
        fdpo_divergence_name(&divs[k], name, sizeof name);
        if (ep.f)
            for (size_t i = 0; i < p.n; i++)
                fprintf(ep.f, "%s,%zu,%.17g,%.17g,%.17g\n", name, i, p.pi_ref[i], p.reward[i], pi_theta[i]);
        table_str(&t, name); table_num(&t, beta); table_str(&t, fdpo_loss_name(L.kind));
        table_num(&t, cr.max_abs_diff); table_num(&t, cr.loss); table_num(&t, cr.grad_norm); table_int(&t, cr.iterations);
        table_end_row(&t);
    }
    rc = outputs_finish(rc, &t, opened, NULL, 0, &ep, NULL);
    free(divs); free(pi_theta);
    fdpo_lab_prepared_free(&pp);
    fdpo_lab_problem_free(&p);
    return rc;
}

/* ---------------- constrained ---------------- */

/* --frontier: "b1,b2,..." or "LO:HI:K" (fdpo_lab_threshold_range) */
static int threshold_grid(const char *spec, double **out, size_t *n) {
    if (strchr(spec, ':')) return fdpo_lab_threshold_range(spec, out, n);
    return flags_number_list("frontier", spec, FLAGS_LIST_ANY | FLAGS_LIST_DISTINCT, out, n);
}

static int lab_constrained(int argc, char **argv) {
    common_opts o;
    const char *divspec, *frontier, *out;
    double beta, min_safety, correlation;
    int stepwise;
    fdpo_flag flags[] = {
        COMMON_FLAGS(o, "1000"),
        {"safety-correlation", FLAG_FLOAT, &correlation, "-0.5", "generated safety: correlation with the reward, in [-1, 1]", 0},
        {"divergence", FLAG_STR, &divspec, "rkl,fkl,js,alpha:0.5", "comma list of admissible divergences (rkl, fkl, js, alpha:A)", 0},
        {"beta", FLAG_FLOAT, &beta, "0.1", "regularisation strength beta > 0", 0},
        {"min-safety", FLAG_FLOAT, &min_safety, NULL, "the constraint E_pi[safety] >= B (required without --frontier)", 0},
        {"stepwise", FLAG_BOOL, &stepwise, "0", "also align for reward, then for safety at beta/lambda*, and report the distance to pi*", 0},
        {"frontier", FLAG_STR, &frontier, NULL, "sweep thresholds: a comma list of B, or LO:HI:K (K evenly spaced)", 0},
        {"out", FLAG_STR, &out, NULL, "one threshold: write pi_ref,reward,safety,pi[,pi_stepwise] here; --frontier: the table", 0},
    };
    PARSE_FLAGS("constrained", "fdpo lab constrained --data CSV --min-safety B [flags]");
    int has_b = flags_was_set(flags, NFLAGS(flags), "min-safety");
    if (frontier && has_b) return fdpo_error("--min-safety: not allowed with --frontier (the sweep sets the thresholds)");
    if (!frontier && !has_b) return fdpo_error("--min-safety: required (or --frontier LIST to sweep thresholds)");
    if (fdpo_beta_check(beta)) return -1;   /* before the table's header reaches stdout */
    fdpo_divergence *divs;
    size_t nd, nb = 1;
    if (parse_divs(divspec, &divs, &nd)) return -1;
    double *bs = NULL;
    if (frontier) { if (threshold_grid(frontier, &bs, &nb)) { free(divs); return -1; } }
    else { bs = fdpo_malloc(sizeof *bs); bs[0] = min_safety; }
    fdpo_rng rng;
    fdpo_rng_seed(&rng, (uint64_t)o.seed);
    fdpo_lab_problem p = {0}; /* freed below also when the load fails */
    int rc = load_problem(&o, flags, NFLAGS(flags), &rng, &p, 0);
    if (rc == 0 && o.input && !p.safety) rc = fdpo_error("--data %s: lab constrained needs a 'safety' column", o.input);
    if (rc == 0 && !o.input) rc = fdpo_lab_generate_safety(&p, correlation, &rng);
    if (rc) { fdpo_lab_problem_free(&p); free(divs); free(bs); return -1; }
    size_t nrow = nd * nb;
    fdpo_lab_constrained_result *rows = fdpo_calloc(nrow, sizeof *rows);
    double *pis = NULL, *steps = NULL;
    if (frontier) rc = fdpo_lab_constrained_sweep(p.pi_ref, p.reward, p.safety, p.n, divs, nd, beta, bs, nb, stepwise, rows);
    else {
        pis = fdpo_malloc(nd * p.n * sizeof(double));
        steps = stepwise ? fdpo_malloc(nd * p.n * sizeof(double)) : NULL;
        for (size_t k = 0; rc == 0 && k < nd; k++)
            rc = fdpo_lab_constrained(p.pi_ref, p.reward, p.safety, p.n, &divs[k], beta, bs[0], stepwise,
                                      pis + k * p.n, steps ? steps + k * p.n : NULL, &rows[k]);
    }
    static const char *cols[] = {"divergence", "beta", "min_safety", "feasible", "active", "lambda", "expected_reward",
                                 "expected_safety", "f_divergence", "kl", "entropy", "objective", "evaluations",
                                 "stepwise_expected_reward", "stepwise_expected_safety", "stepwise_max_abs_diff",
                                 "stepwise_tv", "stepwise_kl"};
    table t;
    int opened = 0;
    /* one threshold's --out is opened first: a file that cannot be written fails before the
     * table reaches stdout */
    fdpo_atomic_file af = {0};
    if (rc == 0 && !frontier && out && fdpo_atomic_open(&af, out)) rc = fdpo_error_context("--out %s", out);
    if (rc == 0) { rc = table_open(&t, frontier ? out : NULL, o.format, cols, stepwise ? 18 : 13); opened = rc == 0; }
    for (size_t k = 0; rc == 0 && k < nrow; k++) {
        const fdpo_lab_constrained_result *r = &rows[k];
        char name[64];
        fdpo_divergence_name(&divs[k / nb], name, sizeof name);
        table_str(&t, name); table_num(&t, beta); table_num(&t, bs[k % nb]); table_bool(&t, r->feasible);
        table_bool(&t, r->active); table_num(&t, r->lambda); table_num(&t, r->expected_reward);
        table_num(&t, r->expected_safety); table_num(&t, r->f_divergence); table_num(&t, r->kl);
        table_num(&t, r->entropy); table_num(&t, r->objective); table_int(&t, r->evaluations);
        if (stepwise) {
            table_num(&t, r->step_expected_reward); table_num(&t, r->step_expected_safety);
            table_num(&t, r->step_max_abs_diff); table_num(&t, r->step_tv); table_num(&t, r->step_kl);
        }
        table_end_row(&t);
    }
    if (rc == 0 && af.f) write_pi_csv(af.f, &p, 1, divs, nd, pis, stepwise ? steps : NULL);
    rc = outputs_finish(rc, &t, opened, NULL, 0, &af, NULL);
    free(rows); free(pis); free(steps); free(divs); free(bs);
    fdpo_lab_problem_free(&p);
    return rc;
}

/* ---------------- dispatch ---------------- */

static const struct { const char *name; int (*fn)(int, char **); const char *summary; } EXPERIMENTS[] = {
    {"solve", lab_solve, "pi* for one problem and beta, every f (tv, chi2 with pi >= 0)"},
    {"frontier", lab_frontier, "beta grid x divergences -> reward / entropy / KL / D_f / support"},
    {"gap", lab_gap, "r_hat = r + noise -> reward gap, regularised-objective gap, exp(eps/beta) eps bound"},
    {"coverage", lab_coverage, "Bradley-Terry r_hat from N comparisons of a data policy -> gap vs N"},
    {"bias", lab_bias, "r_hat = r + b * length -> how much longer pi_hat's answers are"},
    {"check", lab_check, "tabular f-DPO on the exact expected loss converges to pi*"},
    {"constrained", lab_constrained, "max E[r] - beta D_f s.t. E[safety] >= B: lambda*, pi*, stepwise gap, frontier over B"},
};

int cmd_lab(int argc, char **argv) {
    size_t ne = sizeof EXPERIMENTS / sizeof EXPERIMENTS[0];
    /* no experiment: one line, as every error (the 10-line usage went to stderr before it) */
    if (argc < 2)
        return fdpo_error("missing EXPERIMENT (one of solve, frontier, gap, coverage, bias, check, constrained; "
                          "fdpo lab --help says what each does)");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: fdpo lab EXPERIMENT [flags]   (fdpo lab EXPERIMENT --help lists its flags)\n\nexperiments:\n");
        for (size_t i = 0; i < ne; i++) printf("  %-9s %s\n", EXPERIMENTS[i].name, EXPERIMENTS[i].summary);
        return 0;
    }
    for (size_t i = 0; i < ne; i++)
        if (!strcmp(argv[1], EXPERIMENTS[i].name)) {
            int rc = EXPERIMENTS[i].fn(argc - 1, argv + 1);
            while (lab_n_claimed > 0) fdpo_out_file_release(lab_claimed[--lab_n_claimed]);
            return rc;
        }
    return fdpo_error("unknown experiment '%s' (expected solve, frontier, gap, coverage, bias, check, constrained)", argv[1]);
}
