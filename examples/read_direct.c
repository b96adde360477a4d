/* A storage program in C: reads a file with O_DIRECT into hugemm buffers through io_uring
 * fixed buffers, with a per-I/O pin on each read. Register once (hugemm_io_attach gives
 * the ring the runtime's table), pin per I/O (hugemm_io_prep_read), give the memory back
 * after the completion (hugemm_io_complete).
 *
 *   example_read_direct FILE   reads FILE (or a block device) and prints its size and a
 *                              checksum
 *   example_read_direct        writes a 4 MiB file of a known pattern in the current
 *                              directory, reads it back, checks every byte, removes it
 *
 * The checksum is the 64-bit FNV-1a of the file's bytes in order: the reads complete in
 * any order, and each chunk is folded in once the chunks before it have been. In Python:
 *   h = 0xcbf29ce484222325
 *   for b in open(FILE, "rb").read(): h = (h ^ b) * 0x100000001b3 % 2**64
 *   print("%016x" % h)
 *
 * The current directory must be on a disk-backed file system: tmpfs takes O_DIRECT but
 * does buffered I/O. */
#define _GNU_SOURCE /* O_DIRECT */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/fs.h> /* BLKGETSIZE64 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"

enum { kDepth = 4, kChunk = 128 << 10, kMadeSize = 4 << 20 };

/* An SQE taken from the ring but refused by hugemm_io_prep_read is still the ring's and
 * goes out with the next submit: as a NOP whose user_data, 0, is no I/O's (hugemm's
 * tokens never are 0). */
static void Disarm(struct io_uring_sqe* sqe) {
  io_uring_prep_nop(sqe);
  io_uring_sqe_set_data64(sqe, 0);
}

static unsigned char Pattern(uint64_t off) { return (unsigned char)(off * 31 + (off >> 12)); }

/* A file of the pattern, written with ordinary I/O and then opened for O_DIRECT. */
static int MakeFile(const char* path) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return -1;
  static unsigned char block[1 << 16];
  for (uint64_t off = 0; off < kMadeSize; off += sizeof(block)) {
    for (size_t i = 0; i < sizeof(block); ++i) block[i] = Pattern(off + i);
    if (pwrite(fd, block, sizeof(block), (off_t)off) != (ssize_t)sizeof(block)) {
      close(fd);
      return -1;
    }
  }
  fsync(fd);
  close(fd);
  return 0;
}

/* After a failed wait, no read may be left in flight at hugemm_io_detach: those the
 * kernel never took are still in the submission queue (the last ones taken from it) and
 * are cancelled; those it took are reaped. */
static void Drain(struct io_uring* ring, hugemm_io* io) {
  const unsigned untaken = io_uring_sq_ready(ring);
  for (unsigned k = 0; k < untaken; ++k) {
    struct io_uring_sqe* sqe = &ring->sq.sqes[(ring->sq.sqe_tail - 1 - k) & ring->sq.ring_mask];
    if (sqe->user_data != 0) hugemm_io_cancel(io, sqe, NULL);
    Disarm(sqe);
  }
  while (hugemm_io_in_flight(io) > 0) {
    struct io_uring_cqe* cqe;
    const int rc = io_uring_wait_cqe(ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) return; /* the memory under the rest stays out of the pool */
    if (io_uring_cqe_get_data64(cqe) != 0) hugemm_io_complete(io, cqe, NULL);
    io_uring_cqe_seen(ring, cqe);
  }
}

/* Queues the read of the chunk at `off` into buffer `i`, pinned until its completion.
 * -1, with the SQE made a NOP, when hugemm refuses it. */
static int QueueRead(struct io_uring* ring, hugemm_io* io, int fd, const hugemm_buffer* buf,
                     uint64_t off, int i) {
  struct io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (hugemm_io_prep_read(io, sqe, fd, buf->data, kChunk, off, (uint64_t)i) < 0) {
    fprintf(stderr, "hugemm_io_prep_read: %s\n", hugemm_last_error());
    Disarm(sqe);
    return -1;
  }
  return 0;
}

int main(int argc, char** argv) {
  const char* path = argc > 1 ? argv[1] : "example-read-direct.data";
  const int made = argc <= 1;
  hugemm_runtime* rt = NULL;
  struct io_uring ring;
  hugemm_io* io = NULL;
  hugemm_buffer bufs[kDepth];
  int nbufs = 0, failed = 1, fd = -1;
  if (made && MakeFile(path) != 0) {
    perror(path);
    goto out;
  }
  fd = open(path, O_RDONLY | O_DIRECT);
  struct stat st;
  uint64_t size = 0;
  if (fd < 0 || fstat(fd, &st) != 0) {
    perror(path);
    goto out;
  }
  size = (uint64_t)st.st_size;
  /* A block device's size is the device's to say: its st_size is 0. */
  if (S_ISBLK(st.st_mode) && ioctl(fd, BLKGETSIZE64, &size) != 0) {
    perror(path);
    goto out;
  }

  if (hugemm_open(NULL, &rt) < 0) {
    fprintf(stderr, "hugemm_open: %s\n", hugemm_last_error());
    goto out;
  }
  int rc = io_uring_queue_init(kDepth, &ring, 0);
  if (rc < 0) {
    fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-rc));
    goto out;
  }
  /* The ring's fixed buffers are the runtime's: nothing to register by hand, ever. */
  if (hugemm_io_attach(rt, ring.ring_fd, NULL, &io) < 0) {
    fprintf(stderr, "hugemm_io_attach: %s\n", hugemm_last_error());
    goto ring;
  }
  for (; nbufs < kDepth; ++nbufs) {
    if (hugemm_alloc(rt, kChunk, NULL, 0, &bufs[nbufs]) < 0) {
      fprintf(stderr, "hugemm_alloc: %s\n", hugemm_last_error());
      goto buffers;
    }
  }

  /* kDepth reads in flight. The user_data of a read is its buffer's number; the offset
   * and, once it completed, the result are kept beside it. A buffer is checked, folded
   * into the checksum and reused when its offset is the next to fold. */
  uint64_t next = 0, folded = 0, sum = 0xcbf29ce484222325ull, offsets[kDepth]; /* FNV-1a */
  int results[kDepth], ready[kDepth] = {0};
  unsigned in_flight = 0;
  int bad = 0, mismatch = 0;
  for (int i = 0; i < kDepth && next < size; ++i, next += kChunk) {
    offsets[i] = next;
    if (QueueRead(&ring, io, fd, &bufs[i], next, i) < 0) {
      bad = 1;
      break;
    }
    ++in_flight;
  }
  while (in_flight > 0) {
    struct io_uring_cqe* cqe;
    rc = io_uring_submit_and_wait(&ring, 1);
    if (rc < 0 && rc != -EINTR) {
      fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-rc));
      bad = 1;
      Drain(&ring, io);
      break;
    }
    while (io_uring_peek_cqe(&ring, &cqe) == 0) {
      if (io_uring_cqe_get_data64(cqe) == 0) { /* a disarmed SQE's NOP */
        io_uring_cqe_seen(&ring, cqe);
        continue;
      }
      uint64_t i = 0;
      /* The read's pins go back here, whatever its result. */
      if (hugemm_io_complete(io, cqe, &i) < 0) {
        fprintf(stderr, "hugemm_io_complete: %s\n", hugemm_last_error());
        bad = 1;
        io_uring_cqe_seen(&ring, cqe);
        --in_flight;
        continue;
      }
      results[i] = cqe->res;
      ready[i] = 1;
      io_uring_cqe_seen(&ring, cqe);
      --in_flight;
    }
    /* Completed reads in offset order, each buffer then given the next chunk. A short
     * read before the end folds no further: the size check below says so. */
    for (int i = 0; i < kDepth; ++i) {
      if (!ready[i] || offsets[i] != folded) continue;
      ready[i] = 0;
      const int res = results[i];
      if (res < 0) {
        fprintf(stderr, "read at %llu: %s\n", (unsigned long long)offsets[i], strerror(-res));
        bad = 1;
        break;
      }
      const unsigned char* data = bufs[i].data;
      for (int k = 0; k < res; ++k) {
        sum = (sum ^ data[k]) * 0x100000001b3ull;
        if (made && data[k] != Pattern(offsets[i] + (uint64_t)k)) mismatch = 1;
      }
      folded += (uint64_t)res;
      if (!bad && !mismatch && next < size) {
        offsets[i] = next;
        if (QueueRead(&ring, io, fd, &bufs[i], next, i) < 0) {
          bad = 1;
        } else {
          next += kChunk;
          ++in_flight;
        }
      }
      i = -1; /* the next chunk may be in any buffer */
    }
  }
  if (mismatch) {
    fprintf(stderr, "%s: the data read is not what was written\n", path);
  } else if (!bad && folded == size) {
    printf("%s: %llu bytes read with O_DIRECT through fixed buffers (%s), checksum %016llx%s\n",
           path, (unsigned long long)folded,
           hugemm_io_mode(io) == HUGEMM_IO_CLONE ? "cloned table" : "iovecs",
           (unsigned long long)sum, made ? ", every byte as written" : "");
    failed = 0;
  } else if (!bad) {
    fprintf(stderr, "%s: read %llu of %llu bytes\n", path, (unsigned long long)folded,
            (unsigned long long)size);
  }

buffers:
  while (nbufs > 0) hugemm_free(rt, bufs[--nbufs].data);
  hugemm_io_detach(io); /* before the ring goes, with no read in flight */
ring:
  io_uring_queue_exit(&ring);
out:
  hugemm_close(rt);
  if (fd >= 0) close(fd);
  if (made) unlink(path);
  return failed;
}
