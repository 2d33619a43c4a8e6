/* Large long-lived buffers (parameters, gradients, optimizer moments, activations, decoder
 * weights, key/value caches) on transparent huge pages.
 *
 * Why: a bf16 decoding step at 124M streams ~250 MB of packed weights, 61k 4-KiB pages,
 * while the second-level TLB holds a few thousand entries, so nearly every new page costs a
 * page walk. With 2 MiB pages the same bytes are ~120 TLB entries. Linux backs anonymous
 * memory with huge pages only where the range is 2 MiB aligned and, in THP's common
 * "madvise" mode (this VM's), only after madvise(MADV_HUGEPAGE): glibc's malloc does
 * neither. So the buffer is mapped here directly: 2 MiB aligned, its length rounded up to
 * 2 MiB (the kernel can only back whole aligned 2 MiB ranges), and advised.
 *
 * The default since wave 9. Wave 8 kept it opt-in after a measurement under load on an
 * Intel VM (a Firecracker guest with virtio-balloon free page reporting, where the first
 * touch of a fresh 2 MiB block faulted to the host: the bf16 decoder's creation 1.2-2 s
 * longer); its idle measurement already had 124M sampling 1.19x faster on huge pages. On
 * wave 9's idle AMD EPYC VM huge pages win everywhere they apply: `fdpo generate` 124M
 * 8 x 128 bf16 597-660 vs 379-433 tokens/s (process wall 2.3-2.8 vs 4.1-4.9 s; 6k vs 131k
 * page faults), fp32 361-400 vs 324-328; a 124M bf16 train step equal (1.55 vs 1.50 s,
 * noise). Under nested paging a 4 KiB TLB miss is a two-dimensional walk, and a GEMM
 * reading a row-major weight panel by panel touches a new page per row.
 * Then a 124M bf16 DPO step, alternated: 1.69 / 1.44 s with the model's parameters (and
 * their bf16 copies) on huge pages, 1.31 / 1.34 s on 4 KiB; so from wave 9 to wave 16 the
 * parameters and activations got huge pages only with FDPO_HUGEPAGES=1. Wave 17 found why:
 * the gradients and AdamW's moments were glibc's (4 KiB), and a pass over arrays of both page
 * sizes is the slow case. The 124M bf16 DPO step's AdamW took 127 ms with only the
 * parameters on huge pages, 56-65 ms with nothing, 45-48 ms with all of it; the whole step
 * (alternated servers, 14-16 steps each) 1.08-1.09 s on huge pages against 1.13-1.14 s on
 * 4 KiB, the forward + backward 1.00-1.01 vs 1.04 s; the 124M bf16 train step 1.255 vs 1.315 s.
 * So every large buffer now follows one rule:
 * FDPO_HUGEPAGES unset (or anything but 0 and "system") advises MADV_HUGEPAGE,
 * FDPO_HUGEPAGES=0 MADV_NOHUGEPAGE (4 KiB also where THP is "always"),
 * FDPO_HUGEPAGES=system no advice (the system's THP policy: none in "madvise" mode, huge
 * pages in "always": the 2 MiB alignment lets them back the whole buffer). Where
 * mmap/madvise do not exist the buffer comes from malloc, 2 MiB aligned and zeroed as well.
 *
 * Each buffer's mapping (start and length) is kept in a small header just before the
 * returned address, inside the first 4 KiB page of the mapping, so fdpo_free_large needs
 * only the pointer. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fdpo/core.h"
#if defined(__unix__)
#include <sys/mman.h>
#endif

/* Under AddressSanitizer a buffer's bytes past its size (to the 2 MiB rounding) are poisoned,
 * so an overflow there is reported as it is for malloc's blocks */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FDPO_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FDPO_ASAN 1
#endif
#ifdef FDPO_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define LARGE_ALIGN ((size_t)2 << 20) /* x86-64's huge page */
#define LARGE_HEAD ((size_t)4096)     /* the header's page, before the aligned buffer */
#define LARGE_MAGIC 0x6c617267656275ULL

typedef struct {
    void *base;    /* what mmap (or malloc) returned: given back by fdpo_free_large */
    size_t len;    /* mapped bytes from base (0 for malloc) */
    size_t body;   /* usable bytes from the returned address (fdpo_realloc_large grows it) */
    size_t room;   /* bytes reserved from the returned address: body .. room is PROT_NONE */
    uint64_t magic;
} large_head;

static large_head *head_of(void *p) { return (large_head *)((char *)p - sizeof(large_head)); }

int fdpo_hugepages_advice(void) {   /* read at every allocation: a test or bench may change it */
    static const char *const choices[] = {"0", "1", "system", NULL};
    static _Atomic int warned;
    int w = warned;
    int i = fdpo_env_choice("FDPO_HUGEPAGES", choices, 1, &w);
    warned = w;
    return i == 2 ? -1 : i;
}

static void *alloc_large(size_t bytes, size_t room, int advice);

void *fdpo_alloc_large(size_t bytes) { return alloc_large(bytes, 0, fdpo_hugepages_advice()); }

#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
static void advise(void *p, size_t n, int advice) {
    if (advice >= 0) madvise(p, n, advice ? MADV_HUGEPAGE : MADV_NOHUGEPAGE); /* failure is harmless */
}
#endif

/* bytes usable (rounded up to 2 MiB: the body), in a mapping of room bytes (0: the body
 * alone) whose part past the body is reserved, PROT_NONE, for fdpo_realloc_large to grow
 * into; NULL after fdpo_error when the kernel refuses. */
static void *alloc_large(size_t bytes, size_t room, int advice) {
    if (bytes == 0) bytes = 1;
    if (bytes > SIZE_MAX - 2 * LARGE_ALIGN - LARGE_HEAD) {
        fdpo_error("cannot allocate %zu bytes for a large buffer: more than the address space", bytes);
        return NULL;
    }
    size_t body = (bytes + LARGE_ALIGN - 1) / LARGE_ALIGN * LARGE_ALIGN;
    if (room < body || room > SIZE_MAX - 2 * LARGE_ALIGN - LARGE_HEAD) room = body;
#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
    /* room + one alignment's slack: the first 2 MiB boundary at least LARGE_HEAD past the
     * start lies within LARGE_ALIGN of it (mmap returns page-aligned addresses). A reserve
     * is mapped PROT_NONE and without commit (MAP_NORESERVE), its body then made writable. */
    const int reserve = room > body;
    size_t len = room + LARGE_ALIGN;
    char *base = mmap(NULL, len, reserve ? PROT_NONE : PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | (reserve ? MAP_NORESERVE : 0), -1, 0);
    if (base == MAP_FAILED) {
        fdpo_error("cannot allocate %zu bytes (%zu MiB) for a large buffer: %s", bytes, bytes >> 20, strerror(errno));
        return NULL;
    }
    char *p = (char *)(((uintptr_t)base + LARGE_HEAD + LARGE_ALIGN - 1) & ~(uintptr_t)(LARGE_ALIGN - 1));
    char *keep = p - LARGE_HEAD, *end = p + room;
    /* give back the slack on both sides: only [header page, end of room) stays mapped */
    if (keep > base) munmap(base, (size_t)(keep - base));
    if (base + len > end) munmap(end, (size_t)(base + len - end));
    if (reserve && mprotect(keep, LARGE_HEAD + body, PROT_READ | PROT_WRITE) != 0) {
        fdpo_error("cannot allocate %zu bytes (%zu MiB) for a large buffer: %s", bytes, bytes >> 20, strerror(errno));
        munmap(keep, (size_t)(end - keep));
        return NULL;
    }
    advise(p, body, advice);
    *head_of(p) = (large_head){.base = keep, .len = (size_t)(end - keep), .body = body, .room = room, .magic = LARGE_MAGIC};
    return p; /* anonymous pages read as zero until written */
#else
    char *base = malloc(bytes + LARGE_ALIGN + sizeof(large_head));
    if (!base) {
        fdpo_error("cannot allocate %zu bytes (%zu MiB) for a large buffer", bytes, bytes >> 20);
        return NULL;
    }
    char *p = (char *)(((uintptr_t)base + sizeof(large_head) + LARGE_ALIGN - 1) & ~(uintptr_t)(LARGE_ALIGN - 1));
    memset(p, 0, bytes);
    *head_of(p) = (large_head){.base = base, .len = 0, .body = bytes, .room = bytes, .magic = LARGE_MAGIC};
    (void)body;
    (void)advice;
    return p;
#endif
}

void fdpo_free_large(void *p) {
    if (!p) return;
    large_head h = *head_of(p);
    if (h.magic != LARGE_MAGIC) abort(); /* not from fdpo_alloc_large: a bug, as free() of a stray pointer */
#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
    UNPOISON(p, h.body); /* the addresses may be mapped again for something else */
    munmap(h.base, h.len);
#else
    free(h.base);
#endif
}

/* Growable scratch and activation buffers (a model's activations, its LM-head scratch, the
 * bf16 operand copies): grown in place, never moved while they fit the address range
 * reserved at their first allocation.
 *
 * Why: realloc of a large block is mremap, which moves the mapping when the addresses after
 * it are taken (glibc places mmap blocks top-down, so they usually are). Moving keeps the
 * pages, but under shadow paging (wave 10's VM, a PVM guest) every page of the moved range
 * then faults again to the hypervisor on its next touch, invisibly to the guest's fault
 * counters: a 512 MiB block, written in 0.02 s, took 0.75 s to write once after a moving
 * mremap. An online round whose reference scored a few more tokens than the round before
 * grew the reference's ~600 MB of activations by 24 MB and paid ~0.7 s in its scoring for
 * the move. Here the first allocation reserves (PROT_NONE, no memory) eight times the size
 * asked, at least 256 MiB, and a growth within that range only makes more of it usable.
 * Page size: as fdpo_alloc_large's (fdpo_hugepages_advice). */
#define GROW_MIN_ROOM ((size_t)256 << 20)

/* NULL (p untouched) when the memory is not there: fdpo_realloc_large (error.c) adds the
 * out-of-memory rule */
void *fdpo_realloc_large_try(void *p, size_t bytes);
void *fdpo_realloc_large_try(void *p, size_t bytes) {
    if (bytes == 0) bytes = 1;
    size_t body = (bytes + LARGE_ALIGN - 1) / LARGE_ALIGN * LARGE_ALIGN;
    if (p) {
        large_head *h = head_of(p);
        if (h->magic != LARGE_MAGIC) abort(); /* not from fdpo_realloc_large: a bug */
        if (bytes <= h->body) {
            UNPOISON(p, bytes);
            return p;
        }
#if defined(MAP_ANONYMOUS) && defined(MADV_HUGEPAGE)
        if (body <= h->room && h->len) {
            if (mprotect((char *)p + h->body, body - h->body, PROT_READ | PROT_WRITE) == 0) {
                advise((char *)p + h->body, body - h->body, fdpo_hugepages_advice());
                h->body = body;
                UNPOISON(p, bytes);
                POISON((char *)p + bytes, body - bytes);
                return p;
            }
        }
#endif
    }
    /* a new reservation (without one, e.g. under a tight RLIMIT_AS, the body alone: it then
     * moves at each growth); the old contents (if any) copied over */
    size_t room = body > (SIZE_MAX / 8) ? body : 8 * body;
    if (room < GROW_MIN_ROOM) room = GROW_MIN_ROOM;
    int advice = fdpo_hugepages_advice();
    void *q = alloc_large(bytes, room, advice);
    if (!q) q = alloc_large(bytes, 0, advice);
    if (!q) return NULL;
    POISON((char *)q + bytes, head_of(q)->body - bytes);
    if (p) {
        UNPOISON(p, head_of(p)->body);
        memcpy(q, p, head_of(p)->body < bytes ? head_of(p)->body : bytes);
        fdpo_free_large(p);
    }
    return q;
}
