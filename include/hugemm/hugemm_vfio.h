/* hugemm in IOVA mode, in C: a VFIO type1 container that maps all of a runtime's memory
 * once, and DMA segments in its IOVA space per I/O (hugemm/vfio.h has the design).
 *
 * Plain C99, the conventions of hugemm.h: 0 (or a count) on success, a negative errno
 * on failure with hugemm_last_error() naming what was wrong, the kernel's own errno
 * where an ioctl said no.
 *
 *   hugemm_vfio *vfio;
 *   if (hugemm_vfio_attach(rt, container_fd, NULL, &vfio) < 0) die(hugemm_last_error());
 *   hugemm_dma_segment segs[16];
 *   long n = hugemm_vfio_pin_segments(vfio, buf.data, 8192, HUGEMM_PIN | HUGEMM_WRITE, 0,
 *                                     segs, 16);          // segs[i].phys_addr is an IOVA
 *   if (n < 0) die(hugemm_last_error());
 *   ... the device reads and writes, the completion is reaped ...
 *   hugemm_unpin_range(rt, buf.data, 8192, HUGEMM_PIN, 1);
 *   hugemm_vfio_detach(vfio);
 *
 * Thread safety: every function may be called from any thread, except that detach must
 * not race with the others on the same handle.
 */
#ifndef HUGEMM_HUGEMM_VFIO_H_
#define HUGEMM_HUGEMM_VFIO_H_

#include <stddef.h>
#include <stdint.h>

#include "hugemm/hugemm.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hugemm_vfio hugemm_vfio;

typedef struct hugemm_vfio_options {
  uint64_t iova_base;  /* first IOVA handed out; 0 = 4 GiB */
  uint64_t iova_limit; /* end of the IOVA window; 0 = 2^39 */
} hugemm_vfio_options;

/* Maps every extent and buffer of `rt` into the VFIO type1 container `container_fd` and
 * keeps doing so as memory comes and goes (`options` may be NULL). The handle holds the
 * container by a descriptor of its own (close-on-exec) until hugemm_vfio_detach and maps
 * through it: a container the caller closes first lives on until the detach, and a new
 * one that takes its number gets none of these mappings.
 * -EINVAL: bad arguments, an empty or unaligned IOVA window, a container with no IOMMU
 * set yet (VFIO_SET_IOMMU first). -EBADF: a descriptor not open for I/O (closed, or
 * opened with O_PATH). -ENOTTY: not a VFIO container. -ENOMEM: no room in the window.
 * -EMFILE or -ENFILE: no descriptor left to hold the container by. Otherwise
 * VFIO_IOMMU_MAP_DMA's errno (e.g. -EPERM, -EFAULT), with the range in the message;
 * nothing stays mapped. Once attached, memory the container refuses (or the window has
 * no room for) fails the hugemm_map_buffer or hugemm_alloc that brought it, which then
 * maps nothing; that call's message names the ioctl's errno.
 * An IOVA of freed memory is handed out again only once the window has no room left that
 * never was: until then a device given a stale IOVA meets an IOMMU fault, not newer memory.
 * (Memory of hugemm_alloc is mapped with its pool extent, which stays after a free: its
 * IOVAs reach the next allocation there; the pin of each I/O keeps those apart.)
 * One container may serve several runtimes (one hugemm_vfio each) only with disjoint IOVA
 * windows: the kernel refuses a map over IOVAs in use (-EEXIST, as above).
 * -EFAULT in a child of fork() of the process that opened the runtime (hugemm.h). */
int hugemm_vfio_attach(hugemm_runtime* rt, int container_fd, const hugemm_vfio_options* options,
                       hugemm_vfio** out);
/* Unmaps everything it mapped and closes its descriptor of the container; the device
 * must be quiet. NULL is ignored; the handle is freed, so each is detached once (a second
 * detach cannot be checked). Pins taken through it stay the runtime's: hugemm_unpin_range
 * still releases them. hugemm_close detaches a mapper still attached (the container loses
 * its mappings): the handle then answers -EINVAL to all but hugemm_vfio_detach, which
 * frees it. In a child of fork() the container is the parent's too: nothing is unmapped,
 * only the child's copy of the descriptor closed and the handle freed. */
void hugemm_vfio_detach(hugemm_vfio* vfio);
/* The IOVA of the byte at `addr`. -EINVAL: NULL arguments; -ENOENT: not mapped by it. */
int hugemm_vfio_iova(const hugemm_vfio* vfio, const void* addr, uint64_t* iova);
/* hugemm_pin_segments with the segments in IOVA space: runs contiguous in IOVA, each at
 * most `max_segment` bytes (0 = no limit). Released by hugemm_unpin_range of the same
 * addr, length and PIN or GET on the runtime. Returns the number of segments; the
 * errors of hugemm_pin_segments, and -EFAULT for memory this mapper has not mapped. */
long hugemm_vfio_pin_segments(hugemm_vfio* vfio, const void* addr, size_t length, unsigned flags,
                              uint64_t max_segment, hugemm_dma_segment* segments, size_t cap);
/* Ranges mapped now and their bytes (either pointer may be NULL). -EINVAL for NULL. */
int hugemm_vfio_stats(const hugemm_vfio* vfio, size_t* mappings, size_t* bytes);

#ifdef __cplusplus
}
#endif

#endif /* HUGEMM_HUGEMM_VFIO_H_ */
