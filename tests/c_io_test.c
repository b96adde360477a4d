/* The storage C API (hugemm_io.h) from plain C99, linked against the shared libhugemm:
 * an O_DIRECT read through fixed buffers with per-I/O pins, and every entry point's bad
 * input answered with a negative errno and a message. Prints "N passed, N failed"; exits
 * 77 (skip) when no 2M huge pages are free, unless HUGEMM_REQUIRE_HUGEPAGES=1. */
#define _GNU_SOURCE /* O_DIRECT */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "c_check.h"
#include "hugemm/hugemm.h"
#include "hugemm/hugemm_io.h"

/* Calls `call` and checks it returns `err` with a message that names `words`. */
#define CHECK_ERR(call, err, words)                                              \
  do {                                                                           \
    int rc_ = (call);                                                            \
    CHECK(rc_ == (err));                                                         \
    CHECK(strstr(hugemm_last_error(), (words)) != NULL);                         \
    if (rc_ != (err)) fprintf(stderr, "  returned %d, wanted %d\n", rc_, (err)); \
  } while (0)

enum { kFileSize = 1 << 20, kLen = 64 << 10 };

/* hugemm_free on a thread of its own, with what it returned and said. */
struct FreeOnAThread {
  hugemm_runtime* rt;
  void* data;
  int rc;
  char message[512];
};

static void* FreeOnAThreadRun(void* arg) {
  struct FreeOnAThread* f = arg;
  f->rc = hugemm_free(f->rt, f->data);
  snprintf(f->message, sizeof(f->message), "%s", hugemm_last_error());
  return NULL;
}

static unsigned char PatternByte(size_t off) { return (unsigned char)(off * 7 + off / 4096); }

/* Whether the running kernel is older than major.minor. */
static int KernelBefore(int major, int minor) {
  struct utsname u;
  int ma = 0, mi = 0;
  if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2) return 1;
  return ma < major || (ma == major && mi < minor);
}

/* A file of the pattern in the current directory, open for O_DIRECT, unlinked at once. */
static int MakeFile(void) {
  char path[] = "hugemm-c-io-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return -1;
  unlink(path);
  unsigned char* data = malloc(kFileSize);
  for (size_t i = 0; i < kFileSize; ++i) data[i] = PatternByte(i);
  ssize_t n = pwrite(fd, data, kFileSize, 0);
  free(data);
  fsync(fd);
  if (n != kFileSize) return -1;
  int flags = fcntl(fd, F_GETFL);
  if (fcntl(fd, F_SETFL, flags | O_DIRECT) != 0) fprintf(stderr, "(no O_DIRECT here)\n");
  return fd;
}

/* Mappings of hugemm's memory (memfd:hugemm-2M, ...) and of io_uring rings: what a
 * runtime and its rings leave mapped (the sanitizers map memory of their own). */
static int CountMaps(void) {
  FILE* f = fopen("/proc/self/maps", "r");
  if (f == NULL) return -1;
  char line[512];
  int n = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    n += strstr(line, "hugemm-") != NULL || strstr(line, "io_uring") != NULL;
  }
  fclose(f);
  return n;
}

/* Entries in /proc/self/fd: the open descriptors, the one reading it among them. */
static int CountFds(void) {
  DIR* d = opendir("/proc/self/fd");
  if (d == NULL) return -1;
  int n = 0;
  while (readdir(d) != NULL) ++n;
  closedir(d);
  return n;
}

/* A kB line of /proc/self/status (VmPin, HugetlbPages), or -1. */
static long StatusKb(const char* key) {
  FILE* f = fopen("/proc/self/status", "r");
  if (f == NULL) return -1;
  char line[256];
  long kb = -1;
  size_t n = strlen(key);
  while (fgets(line, sizeof(line), f) != NULL) {
    if (strncmp(line, key, n) == 0 && line[n] == ':') kb = strtol(line + n + 1, NULL, 10);
  }
  fclose(f);
  return kb;
}

int main(void) {
  hugemm_runtime* rt = NULL;
  CHECK(hugemm_open(NULL, &rt) == 0);
  struct io_uring ring;
  CHECK(io_uring_queue_init(8, &ring, 0) == 0);

  /* Bad input, before anything is attached. */
  hugemm_io* io = (hugemm_io*)1;
  CHECK_ERR(hugemm_io_attach(NULL, ring.ring_fd, NULL, &io), -EINVAL, "NULL runtime");
  CHECK(io == NULL);
  CHECK_ERR(hugemm_io_attach(rt, ring.ring_fd, NULL, NULL), -EINVAL, "out is NULL");
  CHECK_ERR(hugemm_io_attach(rt, -1, NULL, &io), -EINVAL, "bad ring descriptor");
  hugemm_io_options bad_mode = {7, 0};
  CHECK_ERR(hugemm_io_attach(rt, ring.ring_fd, &bad_mode, &io), -EINVAL, "unknown mode 7");
  int devnull = open("/dev/null", O_RDONLY);
  CHECK_ERR(hugemm_io_attach(rt, devnull, NULL, &io), -EOPNOTSUPP, "not an io_uring instance");
  close(devnull);
  CHECK_ERR(hugemm_io_attach(rt, devnull, NULL, &io), -EBADF, "not an io_uring instance");
  struct io_uring taken;
  CHECK(io_uring_queue_init(2, &taken, 0) == 0);
  CHECK(io_uring_register_buffers_sparse(&taken, 2) == 0);
  CHECK_ERR(hugemm_io_attach(rt, taken.ring_fd, NULL, &io), -EBUSY, "registered-buffer table");
  io_uring_queue_exit(&taken);
  CHECK_ERR(hugemm_io_mode(NULL), -EINVAL, "NULL io");
  CHECK_ERR(hugemm_io_buffer_index(NULL, "x", 1), -EINVAL, "NULL io");
  CHECK_ERR(hugemm_io_prep_read(NULL, NULL, 0, NULL, 1, 0, 0), -EINVAL, "NULL io");
  CHECK_ERR(hugemm_io_prep_write(NULL, NULL, 0, NULL, 1, 0, 0), -EINVAL, "NULL io");
  CHECK_ERR(hugemm_io_complete(NULL, NULL, NULL), -EINVAL, "NULL io");
  CHECK_ERR(hugemm_io_cancel(NULL, NULL, NULL), -EINVAL, "NULL io");
  uint64_t token = 0;
  CHECK_ERR(hugemm_io_pin(NULL, "x", 1, 0, &token), -EINVAL, "NULL io");
  CHECK_ERR(hugemm_io_unpin(NULL, 1), -EINVAL, "NULL io");
  CHECK(hugemm_io_in_flight(NULL) == 0);
  hugemm_io_detach(NULL);

  CHECK(hugemm_io_attach(rt, ring.ring_fd, NULL, &io) == 0 && io != NULL);
  CHECK(hugemm_io_mode(io) == HUGEMM_IO_CLONE || hugemm_io_mode(io) == HUGEMM_IO_IOVEC);

  hugemm_buffer buf;
  int rc = hugemm_alloc(rt, kLen, NULL, 0, &buf);
  if (rc == -ENOMEM) {
    const char* req = getenv("HUGEMM_REQUIRE_HUGEPAGES");
    printf("c_io_test: no free 2M huge pages: %s\n", hugemm_last_error());
    hugemm_io_detach(io);
    io_uring_queue_exit(&ring);
    hugemm_close(rt);
    return req && strcmp(req, "1") == 0 ? 1 : 77;
  }
  CHECK(rc == 0);
  int fd = MakeFile();
  CHECK(fd >= 0);

  /* The index, and what is no fixed buffer. */
  CHECK(hugemm_io_buffer_index(io, buf.data, kLen) >= 0);
  CHECK(hugemm_io_buffer_index(io, buf.data, 0) == hugemm_io_buffer_index(io, buf.data, kLen));
  char stack[64];
  CHECK_ERR(hugemm_io_buffer_index(io, stack, sizeof(stack)), -ENOENT, "not memory of this");
  CHECK_ERR(hugemm_io_buffer_index(io, stack, 0), -ENOENT, "not memory of this");

  /* External memory is held by the runtime but is no fixed buffer. */
  void* ext = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE, -1, 0);
  uint64_t ext_id = 0;
  if (ext != MAP_FAILED && hugemm_register_external(rt, ext, 2 << 20, &ext_id) == 0) {
    CHECK_ERR(hugemm_io_buffer_index(io, ext, 4096), -ENOENT, "external memory");
    struct io_uring_sqe untouched;
    memset(&untouched, 0, sizeof(untouched));
    CHECK_ERR(hugemm_io_prep_read(io, &untouched, 0, ext, 4096, 0, 1), -ENOENT, "external memory");
    CHECK(untouched.opcode == 0 && hugemm_io_in_flight(io) == 0);
    CHECK(hugemm_unregister_external(rt, ext_id) == 0);
  }
  if (ext != MAP_FAILED) munmap(ext, 2 << 20);

  /* One O_DIRECT read through a fixed buffer; the buffer is freed while it is in flight. */
  struct io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  CHECK(hugemm_io_prep_read(io, sqe, fd, buf.data, kLen, 4096, 42) == 0);
  CHECK(hugemm_io_in_flight(io) == 1);
  CHECK(io_uring_submit(&ring) == 1);
  unsigned char* data = buf.data;
  CHECK(hugemm_free(rt, buf.data) == 0);
  struct io_uring_cqe* cqe = NULL;
  CHECK(io_uring_wait_cqe(&ring, &cqe) == 0);
  CHECK(cqe->res == kLen);
  int same = 1;
  for (size_t i = 0; i < kLen; ++i) same &= data[i] == PatternByte(4096 + i);
  CHECK(same);
  uint64_t user_data = 0;
  CHECK(hugemm_io_complete(io, cqe, &user_data) == 0 && user_data == 42);
  CHECK_ERR(hugemm_io_complete(io, cqe, &user_data), -ENOENT, "not an I/O in flight");
  io_uring_cqe_seen(&ring, cqe);
  CHECK(hugemm_io_in_flight(io) == 0);

  /* Bad input on an attached ring: the SQE untouched, nothing pinned. */
  CHECK(hugemm_alloc(rt, kLen, NULL, 0, &buf) == 0);
  struct io_uring_sqe local;
  memset(&local, 0, sizeof(local));
  local.user_data = 7;
  CHECK_ERR(hugemm_io_prep_read(io, NULL, fd, buf.data, kLen, 0, 1), -EINVAL, "no SQE");
  CHECK_ERR(hugemm_io_prep_read(io, &local, fd, buf.data, 0, 0, 1), -EINVAL, "empty");
  CHECK_ERR(hugemm_io_prep_write(io, &local, fd, stack, sizeof(stack), 0, 1), -ENOENT,
            "no fixed buffer");
  CHECK(local.user_data == 7 && hugemm_io_in_flight(io) == 0);
  CHECK_ERR(hugemm_io_complete(io, NULL, NULL), -EINVAL, "no CQE");
  CHECK_ERR(hugemm_io_cancel(io, NULL, NULL), -EINVAL, "no SQE");
  CHECK(hugemm_io_prep_write(io, &local, fd, buf.data, kLen, 0, 5) == 0);
  CHECK(hugemm_io_cancel(io, &local, &user_data) == 0 && user_data == 5);

  /* Pins alone. */
  CHECK_ERR(hugemm_io_pin(io, buf.data, kLen, 1, NULL), -EINVAL, "NULL io or token");
  CHECK_ERR(hugemm_io_pin(io, buf.data, 0, 1, &token), -EINVAL, "empty range");
  CHECK_ERR(hugemm_io_pin(io, stack, sizeof(stack), 0, &token), -ENOENT, "");
  CHECK(hugemm_io_pin(io, buf.data, kLen, 1, &token) == 0 && token != 0);
  CHECK(hugemm_maybe_dma_pinned(rt, buf.data) == 1);
  /* A token is given back by the call of its kind alone: a pin's token is no CQE of a
   * prepared I/O, and a prepared I/O's token is no pin to unpin while it is in flight. */
  {
    struct io_uring_cqe pin_cqe = {.user_data = token};
    CHECK_ERR(hugemm_io_complete(io, &pin_cqe, NULL), -ENOENT, "is a pin of");
    CHECK(hugemm_io_prep_write(io, &local, fd, buf.data, kLen, 0, 5) == 0);
    CHECK_ERR(hugemm_io_unpin(io, local.user_data), -ENOENT, "is a prepared I/O");
    CHECK(hugemm_io_in_flight(io) == 2);
    CHECK(hugemm_io_cancel(io, &local, &user_data) == 0 && user_data == 5);
  }
  CHECK(hugemm_io_unpin(io, token) == 0);
  CHECK_ERR(hugemm_io_unpin(io, token), -ENOENT, "not an I/O in flight");
  CHECK(hugemm_maybe_dma_pinned(rt, buf.data) == 0);

  CHECK(hugemm_free(rt, buf.data) == 0);
  close(fd);

  /* Detached with a read in flight (a pipe read waits for data): its freed buffer is not
   * handed out again, and the late data lands there, not in the next owner's memory.
   * Before 6.13 the detach would wait for the read: the data comes first there, and the
   * completion is not reaped before the detach. */
  int data_first = KernelBefore(6, 13);
  int pipe_fds[2];
  CHECK(pipe(pipe_fds) == 0);
  CHECK(hugemm_alloc(rt, kLen, NULL, 0, &buf) == 0);
  data = buf.data;
  memset(data, 0, 16);
  sqe = io_uring_get_sqe(&ring);
  CHECK(hugemm_io_prep_read(io, sqe, pipe_fds[0], data, kLen, 0, 3) == 0);
  CHECK(io_uring_submit(&ring) == 1);
  CHECK(hugemm_free(rt, data) == 0);
  if (data_first) CHECK(write(pipe_fds[1], "late data", 10) == 10);
  hugemm_io_detach(io);
  hugemm_buffer next;
  CHECK(hugemm_alloc(rt, kLen, NULL, 0, &next) == 0);
  CHECK(next.data != data);
  memset(next.data, 'n', 16);
  if (!data_first) CHECK(write(pipe_fds[1], "late data", 10) == 10);
  CHECK(io_uring_wait_cqe(&ring, &cqe) == 0);
  CHECK(cqe->res == 10);
  io_uring_cqe_seen(&ring, cqe);
  CHECK(memcmp(data, "late data", 10) == 0);
  CHECK(memcmp(next.data, "late data", 10) != 0);
  CHECK(hugemm_free(rt, next.data) == 0);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  /* Detached: the ring may register buffers of its own again. */
  CHECK(io_uring_register_buffers_sparse(&ring, 2) == 0);
  io_uring_queue_exit(&ring);

  /* A buffer the program unmapped behind the runtime's back (see hugemm_free): an iovec
   * table cannot register it, and the attach says so and leaves nothing behind. */
  {
    const int fds_start = CountFds();
    hugemm_runtime* rt3 = NULL;
    CHECK(hugemm_open(NULL, &rt3) == 0);
    hugemm_buffer gone;
    CHECK(hugemm_map_buffer(rt3, 2 << 20, NULL, &gone) == 0);
    CHECK(munmap(gone.data, 2 << 20) == 0);
    struct io_uring ring3;
    CHECK(io_uring_queue_init(2, &ring3, 0) == 0);
    const int fds_ring = CountFds();
    hugemm_io_options iovec = {HUGEMM_IO_IOVEC, 0};
    hugemm_io* io3 = NULL;
    CHECK_ERR(hugemm_io_attach(rt3, ring3.ring_fd, &iovec, &io3), -EFAULT, "Bad address");
    CHECK(io3 == NULL && CountFds() == fds_ring);
    CHECK(io_uring_register_buffers_sparse(&ring3, 2) == 0);
    io_uring_queue_exit(&ring3);
    CHECK(hugemm_free(rt3, gone.data) == 0);
    hugemm_close(rt3);
    CHECK(CountFds() == fds_start);
  }

  /* A single-issuer ring takes changes to its table from its submitter only: a buffer
   * freed on another thread would stay registered, so that free is refused, the buffer
   * left as it was; the submitter frees it. */
  {
    struct io_uring si;
    CHECK(io_uring_queue_init(2, &si, IORING_SETUP_SINGLE_ISSUER) == 0);
    hugemm_io* sio = NULL;
    CHECK(hugemm_io_attach(rt, si.ring_fd, NULL, &sio) == 0);
    hugemm_buffer mine;
    CHECK(hugemm_map_buffer(rt, 2 << 20, NULL, &mine) == 0);
    struct FreeOnAThread f = {rt, mine.data, 0, ""};
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, FreeOnAThreadRun, &f) == 0);
    CHECK(pthread_join(thread, NULL) == 0);
    CHECK(f.rc == -EEXIST);
    CHECK(strstr(f.message, "IORING_SETUP_SINGLE_ISSUER") != NULL);
    CHECK(hugemm_io_buffer_index(sio, mine.data, 4096) >= 0);
    ((volatile unsigned char*)mine.data)[0] = 1; /* still mapped */
    CHECK(hugemm_free(rt, mine.data) == 0);
    hugemm_io_detach(sio);
    io_uring_queue_exit(&si);
  }

  /* hugemm_close with an io still attached detaches it; the handle is left for
   * hugemm_io_detach alone. */
  const int fds_before = CountFds(), maps_before = CountMaps();
  const long pin_before = StatusKb("VmPin"), huge_before = StatusKb("HugetlbPages");
  hugemm_runtime* rt2 = NULL;
  CHECK(hugemm_open(NULL, &rt2) == 0);
  struct io_uring ring2;
  CHECK(io_uring_queue_init(2, &ring2, 0) == 0);
  hugemm_io* io2 = NULL;
  CHECK(hugemm_io_attach(rt2, ring2.ring_fd, NULL, &io2) == 0);
  fd = MakeFile();
  CHECK(fd >= 0);
  /* A freed mapped buffer's index reads nothing, and the next buffer has another one. */
  hugemm_buffer old, mapped;
  CHECK(hugemm_map_buffer(rt2, 2 << 20, NULL, &old) == 0);
  const int stale = hugemm_io_buffer_index(io2, old.data, 4096);
  CHECK(stale >= 0);
  CHECK(hugemm_free(rt2, old.data) == 0);
  CHECK_ERR(hugemm_io_buffer_index(io2, old.data, 4096), -ENOENT, "not memory of this");
  CHECK(hugemm_map_buffer(rt2, 2 << 20, NULL, &mapped) == 0);
  memset(mapped.data, 'm', 4096);
  CHECK(CountMaps() > maps_before && StatusKb("VmPin") > pin_before);
  CHECK(hugemm_io_buffer_index(io2, mapped.data, 4096) >= 0);
  CHECK(hugemm_io_buffer_index(io2, mapped.data, 4096) != stale);
  sqe = io_uring_get_sqe(&ring2);
  io_uring_prep_read_fixed(sqe, fd, old.data, 4096, 0, stale);
  CHECK(io_uring_submit(&ring2) == 1);
  CHECK(io_uring_wait_cqe(&ring2, &cqe) == 0);
  CHECK(cqe->res == -EFAULT);
  io_uring_cqe_seen(&ring2, cqe);
  CHECK(((unsigned char*)mapped.data)[0] == 'm' && ((unsigned char*)mapped.data)[4095] == 'm');
  /* A freed allocation's address: hugemm prepares no I/O on it. */
  CHECK(hugemm_alloc(rt2, kLen, NULL, 0, &buf) == 0);
  CHECK(hugemm_free(rt2, buf.data) == 0);
  CHECK_ERR(hugemm_io_prep_read(io2, &local, fd, buf.data, 4096, 0, 1), -ENOENT, "");
  CHECK(hugemm_io_in_flight(io2) == 0);
  /* The runtime closed with the ring attached and a pinned read reaped, a buffer mapped. */
  sqe = io_uring_get_sqe(&ring2);
  CHECK(hugemm_io_prep_read(io2, sqe, fd, mapped.data, 4096, 8192, 4) == 0);
  CHECK(io_uring_submit(&ring2) == 1);
  CHECK(io_uring_wait_cqe(&ring2, &cqe) == 0);
  CHECK(cqe->res == 4096);
  CHECK(hugemm_io_complete(io2, cqe, NULL) == 0);
  io_uring_cqe_seen(&ring2, cqe);
  CHECK(((unsigned char*)mapped.data)[0] == PatternByte(8192));
  close(fd);
  hugemm_close(rt2);
  CHECK_ERR(hugemm_io_mode(io2), -EINVAL, "runtime of this io is closed");
  CHECK_ERR(hugemm_io_buffer_index(io2, stack, 1), -EINVAL, "closed");
  CHECK_ERR(hugemm_io_prep_read(io2, &local, 0, stack, 1, 0, 1), -EINVAL, "closed");
  CHECK_ERR(hugemm_io_pin(io2, stack, 1, 0, &token), -EINVAL, "closed");
  CHECK(hugemm_io_in_flight(io2) == 0);
  CHECK(io_uring_register_buffers_sparse(&ring2, 2) == 0); /* its table went at the close */
  hugemm_io_detach(io2);
  io_uring_queue_exit(&ring2);
  /* Everything back where it was: descriptors, mappings, kernel pins, huge pages. */
  CHECK(CountFds() == fds_before);
  CHECK(CountMaps() == maps_before);
  CHECK(StatusKb("VmPin") == pin_before);
  CHECK(StatusKb("HugetlbPages") == huge_before);

  hugemm_close(rt);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
