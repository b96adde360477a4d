/* hugemm C API: DMA buffers on huge pages, pinned at one reference operation per folio.
 *
 * Plain C99. Every function that can fail returns 0 (or a count) on success and a
 * negative errno on failure; hugemm_last_error() then returns a message for this
 * thread that names what was wrong. Nothing here aborts on bad input, and no failed
 * call keeps a reference, descriptor or mapping.
 *
 * Errors common to every function that takes them: -EINVAL for a NULL runtime or a NULL
 * output, unknown pin flags, not exactly one of HUGEMM_PIN and HUGEMM_GET, or
 * HUGEMM_LONGTERM with HUGEMM_GET; -EMFILE or -ENFILE from any function that opens a
 * descriptor (a memfd, a file, /proc or /sys) when the process or the system has none
 * left (RLIMIT_NOFILE). Each function lists its own
 * besides. Addresses are looked up, never dereferenced: a freed
 * buffer, or one of another runtime, is memory this runtime does not map (-ENOENT). What
 * cannot be checked is the caller's to keep: a page array or spans unpinned twice, a
 * page-array entry read after its unpin or never written by a pin (the accessors read
 * the folio it names, as a struct page * is read), a subscription unsubscribed twice.
 * doc/design.md ("Errors") has the whole table.
 *
 * Thread safety: any number of threads may call these functions at once, on one runtime
 * or several, except hugemm_close: no other call on that runtime or on one of its
 * subscriptions (hugemm_unsubscribe included) may run during it, and none on the runtime
 * after it. A subscription is unsubscribed once, by one thread; a buffer freed by two at
 * once is freed by one, and the other gets -ENOENT.
 *
 *   hugemm_runtime *rt;
 *   if (hugemm_open(NULL, &rt) < 0) die(hugemm_last_error());
 *   hugemm_buffer buf;
 *   if (hugemm_map_buffer(rt, 1 << 30, NULL, &buf) < 0)  // 512 x 2M hugetlb folios
 *     die(hugemm_last_error());
 *   hugemm_folio_span spans[512];
 *   long n = hugemm_pin_folios(rt, buf.data, buf.size, HUGEMM_PIN | HUGEMM_WRITE,
 *                              spans, 512);
 *   if (n < 0) die(hugemm_last_error());                 // a count only when not negative
 *   ... spans[i] covers spans[i].pages 4K pages, in address order from buf.data: give
 *       the device the PFN of each (hugemm_translate of its first byte), or pin with
 *       hugemm_pin_segments to get physical runs ...
 *   hugemm_unpin_folios(rt, spans, (size_t)n, HUGEMM_PIN, 1);
 *   hugemm_free(rt, buf.data);
 *   hugemm_close(rt);
 */
#ifndef HUGEMM_HUGEMM_H_
#define HUGEMM_HUGEMM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hugemm_runtime hugemm_runtime;

/* This thread's message: what its last failed call found wrong, or the first mismatch
 * its last hugemm_verify found. A call that fails sets it; most calls that succeed clear
 * it to "". The queries made per I/O or per entry (hugemm_io_buffer_index,
 * hugemm_io_mode, hugemm_io_in_flight, hugemm_page_*, hugemm_maybe_dma_pinned,
 * hugemm_mr_lkey, hugemm_mr_rkey, hugemm_mr_ibv) and the functions that return nothing
 * leave it as it was when they succeed: read it right after the call that failed. Valid
 * until this thread's next hugemm call.
 * No C++ exception leaves a hugemm function: one that returns an int or a long answers
 * -ENOMEM when the heap (or the address space RLIMIT_AS allows) runs out inside it, with
 * a message naming the function; one that returns nothing (hugemm_close, the
 * unsubscribe, detach, destroy and put functions) says on stderr what it could not do.
 * Open, hugemm_map_buffer, hugemm_alloc, hugemm_free, the pins, the unpins,
 * hugemm_subscribe, hugemm_register_external, hugemm_io_attach (hugemm_io.h) and
 * hugemm_close then leave nothing behind, with an io_uring ring attached too: a map, an
 * alloc, a subscription, a registration or an attach that fails holds nothing, a free
 * that fails leaves the buffer mapped and whole (free it again), and a free or a close
 * lets go of every page without the heap. Not yet so for the other calls (queries, the
 * other io_uring calls, VFIO and verbs): one that runs out part way may keep memory until
 * the process exits. */
const char* hugemm_last_error(void);

/* ---- open / close ---------------------------------------------------------------- */

enum hugemm_refcount {
  HUGEMM_REFCOUNT_FOLIO = 0, /* one reference operation per folio (default) */
  HUGEMM_REFCOUNT_PAGE = 1   /* one per 4K page, as kernels did before 2021 */
};

typedef struct hugemm_options {
  int refcount;    /* enum hugemm_refcount */
  int kernel_pins; /* nonzero (default when options is NULL): hold an io_uring long-term
                      pin on every mapped buffer so its PFNs cannot move */
} hugemm_options;

/* Opens a runtime. `options` may be NULL for the defaults.
 * -EINVAL: NULL out, an unknown refcount mode. -ENOMEM: no memory for the runtime's own
 * tables (the heap, or the address space RLIMIT_AS allows). Otherwise the errno of what
 * the kernel refused (e.g. io_uring for kernel pins), named by the message. */
int hugemm_open(const hugemm_options* options, hugemm_runtime** out);
/* Frees every buffer still held, ends every subscription still open (no callback runs
 * for the buffers it frees; their handles stay valid for hugemm_unsubscribe alone), detaches every
 * hugemm_io and hugemm_vfio still attached and destroys every hugemm_mr_cache still alive
 * (hugemm_io.h, hugemm_vfio.h, hugemm_verbs.h; each handle is likewise left for its own release
 * call; a hugemm_mr still held keeps its registration and memory until hugemm_mr_put) and
 * closes. Memory still pinned (a page array, spans or segments not unpinned) may still be
 * in a device's hands: it stays mapped, with its huge pages, until the process exits, but loses its
 * kernel pin (the ring closes), so the kernel may move it: unpin before closing. NULL is ignored.
 * fork(): a child process has none of the runtime's memory (it is MADV_DONTFORK) and
 * shares its kernel pin ring with the parent, as it shares the program's rings, VFIO
 * containers and RDMA contexts. A runtime opened before the fork is inert in the child:
 * hugemm_map_buffer, hugemm_alloc, hugemm_free, hugemm_register_external,
 * hugemm_unregister_external, hugemm_io_attach, hugemm_vfio_attach and hugemm_mr_get fail
 * there with -EFAULT. Translations, pins and unpins still answer from the child's copy of
 * the table: they name the parent's memory (addresses the child cannot touch, frames the
 * parent may reuse at any time) and change nothing of the parent's (the child's last
 * unpin of a buffer freed before the fork tells no ring and unmaps nothing); give none of
 * it to a device. hugemm_close releases only the child's ring descriptor and handles (it
 * neither unmaps nor waits), leaving the rest to the child's exit; it, hugemm_io_detach,
 * hugemm_vfio_detach and hugemm_mr_cache_destroy there unregister no ring's table, unmap
 * nothing from a container and deregister nothing. The parent's memory, pins, mappings
 * and registrations stay as they were, and a child that exits leaves the parent
 * unaffected. A child of a parent with other threads should still leave by _exit or exec
 * (as POSIX asks). The runtime's descriptors are close-on-exec. The child is recognised
 * by a pthread_atfork handler: a child made without one (_Fork, a raw clone) must not
 * call the runtime at all. */
void hugemm_close(hugemm_runtime* rt);

/* ---- memory ---------------------------------------------------------------------- */

enum hugemm_backing {
  HUGEMM_BACKING_HUGETLB = 0,   /* memfd huge pages (default) */
  HUGEMM_BACKING_HUGETLBFS = 1, /* a file in a hugetlbfs mount */
  HUGEMM_BACKING_DEVDAX = 2,    /* /dev/daxX.Y */
  HUGEMM_BACKING_ANON = 3       /* 4K anonymous pages */
};

typedef struct hugemm_buffer_options {
  int backing;      /* enum hugemm_backing */
  size_t page_size; /* 0 = the backing's own (2M, device alignment, 4K) */
  int node;         /* NUMA node, -1 = any */
  const char* path; /* devdax: the device; hugetlbfs: a file name in the mount, or NULL */
} hugemm_buffer_options;
/* A hugetlbfs file name (a plain name: no '/', not "." or "..") is created (mode 0600),
 * or opened when it exists, so that another process may map the same memory (MAP_SHARED,
 * from the file's start; a shorter file grows to `length`): the file and its huge pages
 * outlive the buffer, hugemm_free, hugemm_close and the process (also one killed), until
 * a program unlinks it. A call that fails removes the file it created, never one that
 * existed; an existing file it grew keeps its new size, since another process may map it
 * by then (a size holds no huge pages: only pages mapped and touched do). NULL (or "")
 * maps a private file that is gone with the buffer. */

typedef struct hugemm_buffer {
  void* data;
  size_t size;
  size_t folio_size; /* every folio in the buffer has this size */
} hugemm_buffer;

/* Maps `length` bytes (a multiple of the page size) as one folio per native page, in
 * the runtime's shadow page table. `options` may be NULL (hugetlb, 2M, any node).
 * -EINVAL: zero, unaligned or absurd length (beyond the user address space: 2^47 on
 * x86-64), unknown backing, a page size the backing does not have, a NUMA node that is
 * not online or that the process's cpuset does not allow, a hugetlbfs file name that is
 * not a plain name, or names a directory, a FIFO or another file that is not a regular
 * file. -ENOMEM: no huge pages for it (on the node asked for, when one is). A node asked
 * for is served whatever the calling thread's memory policy (set_mempolicy, numactl
 * --membind): the kernel reserves huge pages at the mapping from the nodes of that
 * policy, so for the mapping alone the thread is bound to the node, then given back its
 * own policy (mode, flags, nodes).
 * -ENOENT: no such device-DAX device (a path that is not the character device sysfs
 * describes, or one no driver serves), or no hugetlbfs mount of the page size. -EPERM: the
 * hugetlbfs mount of the page size, or the named file in it (another user's), is not
 * writable by this process, or the device-DAX device may not be opened by it (the device
 * is root's, mode 0600, unless changed). With an io_uring ring attached (hugemm_io.h),
 * what registering the memory in its table fails with: -EEXIST on a thread other than
 * that of a ring made with IORING_SETUP_SINGLE_ISSUER, -ENOMEM past RLIMIT_MEMLOCK. */
int hugemm_map_buffer(hugemm_runtime* rt, size_t length, const hugemm_buffer_options* options,
                      hugemm_buffer* out);
/* One folio of at least `bytes` (a power of two from 4K up to the page size) from the
 * allocator's pools; zeroed unless `uninitialized`. `options` as above (path unused
 * except for devdax). -EINVAL: zero bytes or more than the page size, unknown backing,
 * a page size the backing does not have, a NUMA node that is not online or not in the
 * process's cpuset (devdax: not the device's). -ENOMEM: the pool cannot grow (as for
 * hugemm_map_buffer). -ENOENT, -EPERM, and a ring's -EEXIST when the pool grows: as for
 * hugemm_map_buffer. */
int hugemm_alloc(hugemm_runtime* rt, size_t bytes, const hugemm_buffer_options* options,
                 int uninitialized, hugemm_buffer* out);
/* Frees the buffer starting at `data` (from hugemm_map_buffer or hugemm_alloc). Its
 * memory is reused only after the last pin on it is gone. A hugemm_alloc buffer's memory
 * stays in the runtime's pool for its next allocations; when the kernel has no huge page
 * left, hugemm_map_buffer and hugemm_alloc give the pools' wholly free pages back and try
 * again; a pool with nothing left also takes back the buffers other threads freed and
 * keep cached (see hugemm_trim for the one exception). -ENOENT: `data` is
 * not the start of a buffer of this runtime (NULL, inside one, freed, another runtime's).
 * -EDEADLK: called from a notifier callback of this runtime (see hugemm_subscribe).
 * -EEXIST: a hugemm_map_buffer buffer freed on a thread that a single-issuer io_uring
 * attached to the runtime refuses (hugemm_io.h); the buffer stays as it was.
 * A buffer's memory is the runtime's to unmap: nothing tells it when the program munmaps,
 * mremaps, mprotects or maps over (MAP_FIXED) part of a buffer, drops a page of it
 * (MADV_REMOVE, a hole punched in a named hugetlbfs file) or MADV_DOFORKs it. Its table
 * keeps the frames and protection it recorded, and translations and pins keep handing
 * them out (a HUGEMM_WRITE pin of memory the program made read-only too); hugemm_verify
 * names each such difference. With kernel
 * pins those frames stay this process's until hugemm_free, so a device never writes into
 * memory the kernel gave to another, but they are no longer the memory the program sees
 * there: a page faulted in after a drop is a new, zeroed frame. Without kernel pins the
 * kernel may hand them out again at once. hugemm_free then unmaps the buffer's range
 * whatever is mapped there by then (a mapping the program put in its place too) and
 * leaves a mapping that mremap moved to the program, with its huge pages. A hugemm_alloc
 * buffer's memory goes back to its pool, whose next allocation there is zeroed (unless
 * `uninitialized`): memory the program unmapped or made read-only there faults in that
 * call. MADV_DONTNEED of a buffer changes nothing the runtime knows: the same frames, with
 * their contents, come back on the next touch. */
int hugemm_free(hugemm_runtime* rt, void* data);

/* Gives the cached hugemm_alloc buffers (those a thread freed and keeps for its next
 * allocations) back to their pools, then the pools' free memory back to the kernel, as
 * malloc_trim does. Every thread's cache goes back, the calling thread's and every
 * other's, except that of a thread inside a hugemm_alloc or a free at that very moment:
 * it keeps its cache for its next allocations, its own trim or its exit. A pool maps huge
 * pages in extents that grow with it (each as large as what it holds, up to 1 GiB, or 64
 * pages of 1G) and gives back whole extents only: one buffer in use, or still pinned
 * after its free, keeps its extent. Returns the bytes given back to the kernel (0 when
 * every extent holds a buffer). -EINVAL: NULL runtime. -EDEADLK: called from a notifier
 * callback of this runtime (see hugemm_subscribe). Where the kernel refuses
 * membarrier(2), only the calling thread's cache goes back. On a thread that a
 * single-issuer io_uring attached to the runtime refuses (hugemm_io.h), the extents in
 * that ring's table stay. */
long hugemm_trim(hugemm_runtime* rt);

/* Registers memory this program mapped itself (e.g. its own MAP_HUGETLB buffer) as
 * borrowed folios: pinnable, never long-term. Needs readable PFNs (root) and every page
 * faulted in (touched, or MAP_POPULATE). Each page keeps the protection the kernel gives
 * it: a HUGEMM_WRITE pin of memory mapped read-only fails with -EPERM, and memory the
 * program may not read is refused (-EPERM).
 * -EINVAL: NULL id, zero, unaligned or absurd length, a range that is not whole pages of
 * the size the kernel maps there (2M of a MAP_HUGETLB mapping). -EEXIST: memory the
 * runtime maps already. -ENOENT: memory the process does not map. -EPERM: see above, and
 * PFNs the kernel hides from this process. -EFAULT: a page not faulted in, or a huge page
 * the kernel does not show as one physically contiguous compound page.
 * The runtime is not told when the program later munmaps, mremaps, mprotects or
 * madvises the range, punches a hole in or truncates the file behind it, or forks and
 * writes it (copy-on-write): it keeps handing out the frames it recorded. Unpin and
 * unregister before any such change (MADV_DONTFORK the range before fork). A buffer of
 * another runtime is such memory too: this runtime may register it (it never becomes this
 * runtime's to free), and must unregister it before the other frees it or closes. With kernel
 * pins (the default), writable memory is held by the kernel pin table until it is
 * unregistered, so those frames stay this process's whatever the program does to the
 * mapping: a device never writes into memory the kernel reused. Read-only memory is not
 * held, nor memory the kernel refuses to long-term pin.
 * -ENOMEM: the kernel pin table has no slot left, or RLIMIT_MEMLOCK is reached.
 * -EDEADLK: called from a notifier callback of this runtime (see hugemm_subscribe). */
int hugemm_register_external(hugemm_runtime* rt, void* addr, size_t length, uint64_t* id);
/* -EFAULT while any of its memory is pinned; a refused unregister changes nothing.
 * -ENOENT: an id this runtime did not hand out, or one already unregistered.
 * -EDEADLK: called from a notifier callback of this runtime (see hugemm_subscribe). */
int hugemm_unregister_external(hugemm_runtime* rt, uint64_t id);

/* ---- pin / unpin ----------------------------------------------------------------- */

enum hugemm_pin_flags {
  HUGEMM_PIN = 1u << 0,       /* for DMA: counted as pins (hugemm_folio_info) */
  HUGEMM_GET = 1u << 1,       /* plain references */
  HUGEMM_WRITE = 1u << 2,     /* the device writes: unpin may mark folios dirty */
  HUGEMM_LONGTERM = 1u << 3,  /* held indefinitely: refused on borrowed memory */
  HUGEMM_FAST_ONLY = 1u << 4, /* never the slow path */
  HUGEMM_PARTIAL = 1u << 5    /* return what was pinned instead of failing */
};

/* A page-array entry: one per 4K page, 8 bytes like the kernel's struct page *. It
 * encodes the folio, the page's index in it and how it was referenced; read it with the
 * accessors below. Like a struct page *, an entry is good from the pin that wrote it to
 * its unpin: hugemm_page_address and hugemm_page_pfn read the folio it names, which may
 * be gone after the unpin, so reading them then, or for an entry no pin wrote, is
 * undefined. A zero entry reads as none. */
typedef struct hugemm_page {
  uint64_t bits;
} hugemm_page;

/* The opaque folio handle of a page-array entry (as in hugemm_folio_span.folio). */
void* hugemm_page_folio(hugemm_page page);
/* The page's index inside its folio. */
uint32_t hugemm_page_index(hugemm_page page);
/* The page's virtual address; NULL for an entry no pin wrote (zero). */
void* hugemm_page_address(hugemm_page page);
/* The page's PFN, UINT64_MAX when unknown or the entry is zero. */
uint64_t hugemm_page_pfn(hugemm_page page);

/* One entry per folio run: `pages` 4K pages from `first_page`. */
typedef struct hugemm_folio_span {
  void* folio; /* opaque folio handle */
  uint32_t first_page;
  uint32_t pages;
} hugemm_folio_span;

typedef struct hugemm_dma_segment {
  uint64_t phys_addr;
  uint64_t length;
} hugemm_dma_segment;

/* Releasing a pin. Each output has its own unpin, which works from what the pin recorded,
 * not from the mapping, so it is valid after hugemm_free of the buffer (a freed buffer's
 * memory stays until its last pin is released, and only then is reused):
 *   hugemm_pin_pages    -> hugemm_unpin_pages (the page array);
 *   hugemm_pin_folios   -> hugemm_unpin_folios (the spans, with the pin's PIN or GET);
 *   hugemm_pin_segments -> hugemm_unpin_range (the same addr, length and PIN or GET). */

/* Errors of the three pins: -EINVAL (flags; a range that wraps the address space; no room
 * for the output), -ENOENT (a page this runtime does not map: freed, another runtime's),
 * -EPERM (a WRITE pin of read-only memory), -EFAULT (a device-exclusive page, a
 * LONGTERM pin of borrowed memory), -ENOMEM (the output is full, a count would
 * overflow), -EAGAIN (FAST_ONLY and the mapping kept changing). An empty range pins
 * nothing and returns 0 if the flags are valid; its output may then be NULL, as the
 * unpins accept NULL with nothing to unpin. A pin that fails keeps nothing pinned, but
 * may have written part of its output array. */

/* Pins `npages` 4K pages from the page holding `addr` into pages[]. Returns the number
 * pinned (npages, or fewer with HUGEMM_PARTIAL) or a negative errno. */
long hugemm_pin_pages(hugemm_runtime* rt, const void* addr, size_t npages, unsigned flags,
                      hugemm_page* pages);
/* Pins [addr, addr + length) as folio spans (at most `cap`). Returns the span count. */
long hugemm_pin_folios(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                       hugemm_folio_span* spans, size_t cap);
/* Pins [addr, addr + length) and writes its physically contiguous runs, each at most
 * `max_segment` bytes (0 = unlimited; else at least 4K, -EINVAL below, and runs split at
 * its whole 4K pages), at most `cap`. Returns the segment count.
 * Segments name no folios, so the runtime keeps the folio runs this call pinned until
 * hugemm_unpin_range with the same addr, length and PIN or GET gives them back: exactly
 * what was pinned, also after hugemm_free and after a HUGEMM_PARTIAL pin. A PARTIAL pin
 * with too few segments for the range pins as far as `cap` of them reach, in whole 4K
 * pages (their lengths say how far; with HUGEMM_FAST_ONLY, to the last whole folio run).
 * -EFAULT (nothing pinned): memory whose PFNs the kernel hid when it was mapped (pagemap
 * shows them only to a process with CAP_SYS_ADMIN); hugemm_translate and
 * hugemm_page_pfn then answer UINT64_MAX: no physical address is ever made up. */
long hugemm_pin_segments(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                         uint64_t max_segment, hugemm_dma_segment* segments, size_t cap);
/* Unpins a page array, one reference operation per run of the same folio; `dirty`
 * marks each folio dirty once. Returns the reference operations done. -EINVAL: NULL
 * pages with n > 0. The entries must be the pin's own, each unpinned once: a run whose
 * folio holds fewer references of its kind than the run has entries (never pinned, or
 * unpinned already) is not unpinned, and the call returns -EFAULT saying how many runs
 * were refused, having given back all the others. The check cannot tell one holder's
 * pins from another's: entries unpinned twice while the folio holds other pins take
 * those. */
long hugemm_unpin_pages(hugemm_runtime* rt, const hugemm_page* pages, size_t n, int dirty);
/* Unpins spans taken with `flags` (HUGEMM_PIN or HUGEMM_GET). -EINVAL: NULL spans with
 * n > 0, flags as for a pin. The spans must be the pin's own, each unpinned once: a span
 * whose folio holds fewer references of that kind (never pinned, unpinned already, or
 * pinned with the other kind) is not unpinned, and the call returns -EFAULT saying how
 * many were refused, having given back all the others (as hugemm_unpin_pages). */
long hugemm_unpin_folios(hugemm_runtime* rt, const hugemm_folio_span* spans, size_t n,
                         unsigned flags, int dirty);
/* Unpins what a pin of exactly [addr, addr + length) with `flags` took: the oldest
 * hugemm_pin_segments pin of that range and kind not yet released, from what it recorded;
 * without one, the pages the table maps there now, which is right only while the range
 * still maps what it mapped when pinned (-EFAULT and nothing unpinned once part of it is
 * unmapped, e.g. after hugemm_free: release page arrays and spans by their own unpins).
 * -EINVAL: zero length, a range that wraps the address space, flags as for a pin.
 * -EFAULT: part of the range is unmapped (so also a range longer than the address
 * space that does not wrap), or (by the table) a folio holds fewer pins of that kind
 * than the range has pages, i.e. it was never pinned or already released: nothing is
 * unpinned. By the table, the pins of hugemm_pin_segments records not yet released are
 * left alone (they go back by their records only, so never twice); beyond those the
 * check counts pins, not their holders: a range never pinned by this caller but pinned
 * by another (a page array, a held hugemm_mr) passes it and takes the other's pins. */
int hugemm_unpin_range(hugemm_runtime* rt, const void* addr, size_t length, unsigned flags,
                       int dirty);
/* 1 if the folio mapping `addr` may be pinned for DMA, 0 if not, unmapped or rt NULL. */
int hugemm_maybe_dma_pinned(hugemm_runtime* rt, const void* addr);

/* ---- translate / folio info ------------------------------------------------------- */

typedef struct hugemm_translation {
  uint64_t pfn;       /* UINT64_MAX when unknown */
  uint64_t run_bytes; /* physically contiguous bytes from addr (up to max_run) */
  uint64_t leaf_bytes;
  int level;     /* 0 PTE, 1 PMD, 2 PUD */
  int exclusive; /* a device-exclusive entry */
  void* folio;
  uint32_t page;
} hugemm_translation;

/* VA -> PFN, leaf, contiguous run (scanning up to `max_run` bytes; 0 = the leaf).
 * -ENOENT: `addr` is not mapped by this runtime. */
int hugemm_translate(hugemm_runtime* rt, const void* addr, uint64_t max_run,
                     hugemm_translation* out);

typedef struct hugemm_folio_info {
  void* data;
  uint64_t size;
  uint64_t head_pfn; /* UINT64_MAX when unknown */
  int32_t refcount;
  /* Pins of a large folio (order > 0). A 4K folio keeps no pin count: each pin adds
   * 1024 to its refcount, so it reads 0 here, and refcount >= 1024 means it may be
   * pinned (the kernel's rule for order-0 pages). */
  int32_t pincount;
  uint32_t flags; /* bit 0 dirty, bit 1 referenced, bit 2 borrowed, bit 3 reserve meta */
  int order;
  int node;
  int backing; /* enum hugemm_backing */
  int meta_in_reserve;
} hugemm_folio_info;

/* The folio mapping `addr`. -ENOENT: `addr` is not mapped by this runtime. */
int hugemm_folio_info_at(hugemm_runtime* rt, const void* addr, hugemm_folio_info* out);

/* ---- verify ---------------------------------------------------------------------- */

typedef struct hugemm_verify_report {
  uint64_t leaves_checked; /* the shadow table's leaves in the range, each held against
                            * the kernel's mapping of it */
  uint64_t mismatches;     /* leaves where the two differ */
  void* first_mismatch;    /* the address of the first, NULL when none */
  uint64_t pfns_hidden;    /* leaves whose PFNs the kernel hides (PUD-mapped device-DAX),
                            * held against the recorded PFNs and kpageflags only */
  int pfns_checked;        /* 1 when pagemap showed PFNs to compare, 0 when it hid them */
  int flags_checked;       /* 1 when kpageflags was read too */
} hugemm_verify_report;

/* Holds the runtime's shadow table over [addr, addr + length) against the kernel's own
 * (/proc/self/maps, pagemap, kpageflags): each leaf must be mapped by the kernel, with at
 * least its protection, at its recorded PFNs, and as large a page as it claims. This is
 * how a program notices memory it changed behind the runtime's back (munmap, mremap,
 * MADV_REMOVE, mprotect of a buffer; see hugemm_free).
 * Returns the number of mismatches (0: the two agree), and with one or more,
 * hugemm_last_error() names the first ("0x7f..: the kernel maps nothing here, ...").
 * `out` may be NULL. -EINVAL: NULL runtime, zero length, a range that wraps the address
 * space. -ENOENT: this runtime maps nothing in the range (a freed buffer, another
 * runtime's). Any other negative errno: the kernel's view could not be read (-EMFILE
 * with no descriptor left). Reads /proc: not for a fast path. */
long hugemm_verify(hugemm_runtime* rt, const void* addr, size_t length, hugemm_verify_report* out);

/* ---- notifiers ------------------------------------------------------------------- */

enum hugemm_invalidate_reason {
  HUGEMM_INVALIDATE_UNMAP = 0,
  HUGEMM_INVALIDATE_SPLIT = 1,
  HUGEMM_INVALIDATE_PROTECT = 2,
  HUGEMM_INVALIDATE_EXCLUSIVE = 3,
  HUGEMM_INVALIDATE_RESTORE = 4
};

typedef void (*hugemm_invalidate_fn)(void* user, const void* addr, size_t length, int reason);

typedef struct hugemm_subscription hugemm_subscription;

/* Hears changes to [addr, addr + length): `start` before, `end` after (either may be
 * NULL). *sequence (if not NULL) receives a word to read without a call: a registration
 * built while (*seq & 0xffff) == 0 stays valid exactly while *seq is unchanged. The runtime
 * changes it atomically, on the thread that changes the mapping: read it with an acquire
 * load (GCC and Clang: __atomic_load_n(seq, __ATOMIC_ACQUIRE)), not a plain read, which is
 * a data race (ThreadSanitizer reports it) and orders none of the reads that follow it.
 * The callbacks run on the thread that changes the mapping, one announcement at a time
 * under the runtime's notifier lock; a subscription made while a change is under way
 * hears its start at once, inside hugemm_subscribe on the subscribing thread, before
 * *out is written. They may translate, pin, unpin, map and allocate; hugemm_subscribe,
 * hugemm_free, hugemm_trim, hugemm_register_external and hugemm_unregister_external of
 * the same runtime refuse there with -EDEADLK (they take that lock), and so do those of a
 * runtime whose callback this thread runs further out (a callback that frees another
 * runtime's memory runs that runtime's callbacks inside it). hugemm_unsubscribe there
 * takes effect at once and finishes after the announcement, and hugemm_close must not be
 * called from one. A call on another runtime from a callback takes that runtime's lock:
 * two threads whose callbacks each call into the other's runtime wait for each other, as
 * two mutexes taken in opposite orders do, so keep such calls one way round.
 * -EINVAL: zero length, a range that wraps the address space. -EDEADLK: see above. */
int hugemm_subscribe(hugemm_runtime* rt, const void* addr, size_t length,
                     hugemm_invalidate_fn start, hugemm_invalidate_fn end, void* user,
                     hugemm_subscription** out, const volatile uint64_t** sequence);
/* After it returns, no callback of this subscription runs. NULL is ignored, and so is a
 * subscription whose runtime is closed (only its handle is freed). */
void hugemm_unsubscribe(hugemm_subscription* sub);

#ifdef __cplusplus
}
#endif

#endif /* HUGEMM_HUGEMM_H_ */
