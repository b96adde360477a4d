/* hugemm for storage programs, in C: io_uring fixed buffers on any hugemm memory, and
 * per-I/O pins. Register once, pin per I/O, free after completion.
 *
 * Plain C99, the conventions of hugemm.h: 0 (or a count, an index) on success, a negative
 * errno on failure with hugemm_last_error() naming what was wrong. The program owns its
 * ring (liburing's struct io_uring, or its own); hugemm gives it a registered-buffer table
 * equal to the runtime's kernel pin table and keeps it so as memory comes and goes, so the
 * program never registers buffers itself.
 *
 *   struct io_uring ring;
 *   io_uring_queue_init(64, &ring, 0);
 *   hugemm_io *io;
 *   if (hugemm_io_attach(rt, ring.ring_fd, NULL, &io) < 0) die(hugemm_last_error());
 *   hugemm_buffer buf;
 *   if (hugemm_alloc(rt, 128 << 10, NULL, 0, &buf) < 0) die(hugemm_last_error());
 *   struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
 *   if (hugemm_io_prep_read(io, sqe, fd, buf.data, 128 << 10, offset, my_tag) < 0)
 *     die(hugemm_last_error());  // READ_FIXED, pinned; a refused SQE is made a NOP (below)
 *   io_uring_submit(&ring);
 *   ... hugemm_free(rt, buf.data) is safe now: the memory waits for the completion ...
 *   io_uring_wait_cqe(&ring, &cqe);
 *   uint64_t tag;
 *   hugemm_io_complete(io, cqe, &tag);                      // unpinned, my_tag back
 *   io_uring_cqe_seen(&ring, cqe);
 *   hugemm_io_detach(io);                                   // before io_uring_queue_exit
 *
 * The ring must have no registered buffers of its own. One thread prepares and completes
 * per hugemm_io, as with a liburing ring; hugemm_io_buffer_index may be called from any
 * thread. Memory allocated or freed on other threads updates the table from those
 * threads, so a ring made with IORING_SETUP_SINGLE_ISSUER only works when one thread does
 * both: on another thread, a hugemm_map_buffer, a hugemm_alloc that needs new memory, or
 * a hugemm_free of a hugemm_map_buffer buffer fails with the kernel's -EEXIST (the buffer
 * stays), the message naming the ring and why, and hugemm_trim keeps what is in the
 * ring's table. A mapped buffer whose last pin drops on such a thread after its free is
 * unmapped, but the ring keeps its slot and the huge pages under it (stderr says so)
 * until the submitter next changes the ring's table (a hugemm_map_buffer, a hugemm_alloc
 * that grows a pool, a hugemm_free of a mapped buffer, a hugemm_trim that gives memory
 * back) or the detach.
 */
#ifndef HUGEMM_HUGEMM_IO_H_
#define HUGEMM_HUGEMM_IO_H_

#include <stddef.h>
#include <stdint.h>

#include "hugemm/hugemm.h"

#ifdef __cplusplus
extern "C" {
#endif

struct io_uring_sqe;
struct io_uring_cqe;

typedef struct hugemm_io hugemm_io;

enum hugemm_io_mode {
  HUGEMM_IO_AUTO = 0,  /* clone where the kernel can, else iovecs (the default) */
  HUGEMM_IO_CLONE = 1, /* share the runtime's table: Linux 6.12, kernel pins on */
  HUGEMM_IO_IOVEC = 2  /* register the same memory in the ring (pinned again) */
};

typedef struct hugemm_io_options {
  int mode;               /* enum hugemm_io_mode */
  unsigned max_in_flight; /* I/Os prepared and not completed: 0 = 4096, at most 1 << 20
                           * (-EINVAL above); a record each, allocated up front */
} hugemm_io_options;

/* Gives the ring at `ring_fd` the runtime's fixed buffers (`options` may be NULL).
 * -EINVAL bad arguments (a negative `ring_fd` among them); -EBUSY the ring has registered
 * buffers already; -EFAULT clone asked with the runtime's kernel pins off; -EOPNOTSUPP
 * clone asked on a kernel without IORING_REGISTER_CLONE_BUFFERS, or `ring_fd` is no
 * io_uring (-EBADF: no descriptor of that number open for I/O, as a closed one or one
 * opened with O_PATH); -ENOMEM RLIMIT_MEMLOCK (iovec mode); -EMFILE or -ENFILE no
 * descriptor left for the one `io` holds the ring by (close-on-exec, until
 * hugemm_io_detach); -EFAULT in a child of fork() of the process that opened the runtime
 * (hugemm.h): the child has none of its memory; -EFAULT (iovec mode) memory of the
 * runtime the program unmapped itself (see hugemm_free), which the kernel cannot
 * register; -EEXIST the ring was made with IORING_SETUP_SINGLE_ISSUER and this thread is
 * not its submitter. */
int hugemm_io_attach(hugemm_runtime* rt, int ring_fd, const hugemm_io_options* options,
                     hugemm_io** out);
/* Unregisters the ring's table, closes the descriptor of the ring `io` holds and frees
 * `io`. Call it before io_uring_queue_exit, after completing or cancelling every I/O: the
 * memory under one still in flight may still be written by the device, so it is never
 * given back (it stays out of the runtime's pool, mapped until the process exits), and
 * kernels before 6.13 wait here for the I/Os in flight through the table or a registered
 * file (a read of a pipe or socket: until data comes; a signal does not end the wait). A
 * ring the program closed first lives on until here, with its I/O in flight, and ends
 * here without the unregister (nor its wait); a new ring that took its number is never
 * touched. An unregister the kernel refuses (a single-issuer ring detached from a thread
 * not its submitter, which keeps its table) is said on stderr. hugemm_close detaches every
 * io of its runtime still attached: the handle then answers -EINVAL to all but
 * hugemm_io_detach, which frees it. In a child of fork() the ring's table is left as it
 * is (it is the parent's too); only the child's copy of the descriptor is closed. NULL is
 * ignored. */
void hugemm_io_detach(hugemm_io* io);
/* HUGEMM_IO_CLONE or HUGEMM_IO_IOVEC: how the table was made; -EINVAL for NULL. */
int hugemm_io_mode(const hugemm_io* io);

/* The buf_index for READ_FIXED / WRITE_FIXED of [addr, addr + length), in O(1); -ENOENT
 * (with the reason) when that memory is no fixed buffer: not hugemm memory, external
 * memory (hugemm_register_external), device-DAX memory the kernel would not register
 * (RLIMIT_MEMLOCK reached: device memory never moves, so it is mapped without a kernel
 * pin, where other memory fails to map), past the end of its mapping, or across a 1 GiB
 * boundary of a larger one (io_uring registers at most 1 GiB per slot, so a buffer of
 * 2 GiB is two fixed buffers). The mapping of a hugemm_alloc buffer is the pool extent it
 * was carved from: a range that runs from it into a neighbouring allocation has an index
 * (as it does for the kernel), and is the program's to avoid. A length of 0 asks for the
 * buffer holding the byte at addr.
 * An index is good while its memory is: after hugemm_free of a hugemm_map_buffer buffer
 * its slot is emptied before the memory is unmapped (an I/O through it completes with
 * -EFAULT) and stays empty until every slot freed before it has gone to new memory, so
 * the next buffer, even at the same address, has another index. A hugemm_alloc buffer's
 * index is its pool extent's, which stays registered after the free: an I/O through the
 * old index and address reaches whatever the pool hands out there next. An SQE the
 * program fills itself from this index is safe from a free only under hugemm_io_pin,
 * taken before the submit and given back after the completion (hugemm_io_prep_read and
 * hugemm_io_prep_write do both, and refuse freed memory with -ENOENT). */
int hugemm_io_buffer_index(const hugemm_io* io, const void* addr, size_t length);

/* Fills `sqe` as READ_FIXED (WRITE_FIXED) of `length` bytes at `offset` of `fd` into
 * (from) `buf` and pins the folios under it until hugemm_io_complete. The SQE's
 * user_data becomes hugemm's token (never 0); `user_data` comes back from
 * hugemm_io_complete. A token holds the address of hugemm's record of the I/O in its low
 * 48 bits and a generation (never 0) in its top 16. So a user_data the program gives its
 * own SQEs is never a token when it is a number below 2^48 or the address of one of the
 * program's objects (tagged in the top 16 bits or not); nor is another hugemm_io's token.
 * On error nothing is pinned and the SQE is untouched, but it is still the ring's and goes
 * out with the next submit: make it a NOP (io_uring_prep_nop, with a user_data of 0, which
 * no token is). -EINVAL, -ENOENT (no fixed buffer), -ENOMEM (max_in_flight reached), and
 * the pin's errors. */
int hugemm_io_prep_read(hugemm_io* io, struct io_uring_sqe* sqe, int fd, void* buf, unsigned length,
                        uint64_t offset, uint64_t user_data);
int hugemm_io_prep_write(hugemm_io* io, struct io_uring_sqe* sqe, int fd, const void* buf,
                         unsigned length, uint64_t offset, uint64_t user_data);
/* Unpins the I/O of `cqe` (marking the folios dirty after a read) and writes its
 * user_data to *user_data (may be NULL). -ENOENT for a CQE of no prepared I/O (one of the
 * program's own SQEs, one completed already, or one whose user_data is a token of
 * hugemm_io_pin, which stays pinned): nothing is unpinned twice. A completed
 * token could match again only once its record has served 65535 more I/Os; records are
 * reused oldest first. cqe->res is the program's to check. */
int hugemm_io_complete(hugemm_io* io, const struct io_uring_cqe* cqe, uint64_t* user_data);
/* For an SQE prepared but never submitted: unpins it (as hugemm_io_complete). */
int hugemm_io_cancel(hugemm_io* io, const struct io_uring_sqe* sqe, uint64_t* user_data);
/* I/Os prepared and not yet completed or cancelled, and tokens of hugemm_io_pin not yet
 * unpinned: what max_in_flight bounds. */
unsigned hugemm_io_in_flight(const hugemm_io* io);

/* Per-I/O pins alone, for a program that fills its SQEs itself: pins the folios under
 * [addr, addr + length) (`device_writes`: the I/O writes memory) and writes a token
 * (never 0) to *token. */
int hugemm_io_pin(hugemm_io* io, const void* addr, size_t length, int device_writes,
                  uint64_t* token);
/* Gives a token's pins back; -ENOENT for a token not in flight, and for the token of an
 * I/O hugemm_io_prep_read or hugemm_io_prep_write prepared: its memory stays pinned until
 * hugemm_io_complete (or hugemm_io_cancel), as the device may still use it. */
int hugemm_io_unpin(hugemm_io* io, uint64_t token);

#ifdef __cplusplus
}
#endif

#endif /* HUGEMM_HUGEMM_IO_H_ */
