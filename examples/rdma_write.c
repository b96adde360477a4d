/* An RDMA WRITE between two processes, from one hugemm buffer into another, with
 * registrations from hugemm's MR cache (hugemm/hugemm_verbs.h).
 *
 *   example_rdma_write server DEVICE GID_INDEX PORT
 *   example_rdma_write client DEVICE GID_INDEX PORT SERVER_IPV4
 *
 * Each side maps a 2M huge page with hugemm and gets a registration for it from the MR
 * cache. They swap queue-pair details, the buffer's address and its rkey over TCP, then
 * the client writes 1 MiB into the server's buffer with one RDMA WRITE, under a
 * registration it gets for just those bytes (a hit: the cache registered the whole
 * buffer), and tells the server over TCP, which checks every byte.
 * With soft-RoCE:  rdma link add rxe0 type rxe netdev eth0, then use GID index 1 (RoCE v2,
 * IPv4). */
#define _POSIX_C_SOURCE 200809L /* nanosleep, under -std=c99 too */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hugemm/hugemm_verbs.h"

#define MESSAGE_BYTES (1u << 20)

struct peer {
  uint32_t qpn, psn;
  uint8_t gid[16];
  uint64_t addr;
  uint32_t rkey, pad;
};

static int fail(const char* what) {
  fprintf(stderr, "rdma_write: %s\n", what);
  return 1;
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + (i >> 12)); }

/* The TCP side channel: the server accepts one connection, the client connects. */
static int tcp_connect(int server, const char* host, int port) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (server) {
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sa.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr*)&sa, sizeof(sa)) < 0 || listen(fd, 1) < 0) {
      close(fd);
      return -1;
    }
    int conn = accept(fd, NULL, NULL);
    close(fd);
    return conn;
  }
  const struct timespec retry = {0, 100000000}; /* the server may not listen yet */
  for (int i = 0; i < 300 && inet_pton(AF_INET, host, &sa.sin_addr) == 1; ++i) {
    if (connect(fd, (struct sockaddr*)&sa, sizeof(sa)) == 0) return fd;
    nanosleep(&retry, NULL);
  }
  close(fd);
  return -1;
}

static int exchange(int fd, const void* mine, void* theirs, size_t n) {
  if (write(fd, mine, n) != (ssize_t)n) return -1;
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, (char*)theirs + got, n - got);
    if (r <= 0) return -1;
    got += (size_t)r;
  }
  return 0;
}

/* A reliable-connected queue pair on port 1, moved to INIT. */
static struct ibv_qp* make_qp(struct ibv_pd* pd, struct ibv_cq* cq) {
  struct ibv_qp_init_attr init;
  memset(&init, 0, sizeof(init));
  init.send_cq = init.recv_cq = cq;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = init.cap.max_recv_wr = 4;
  init.cap.max_send_sge = init.cap.max_recv_sge = 1;
  struct ibv_qp* qp = ibv_create_qp(pd, &init);
  if (qp == NULL) return NULL;
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof(a));
  a.qp_state = IBV_QPS_INIT;
  a.port_num = 1;
  a.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
    ibv_destroy_qp(qp);
    return NULL;
  }
  return qp;
}

/* INIT -> RTR -> RTS towards the peer, addressed by its GID (RoCE v2). */
static int connect_qp(struct ibv_qp* qp, const struct peer* p, uint32_t my_psn, int gid_index,
                      enum ibv_mtu mtu) {
  struct ibv_qp_attr a;
  memset(&a, 0, sizeof(a));
  a.qp_state = IBV_QPS_RTR;
  a.path_mtu = mtu;
  a.dest_qp_num = p->qpn;
  a.rq_psn = p->psn;
  a.max_dest_rd_atomic = 1;
  a.min_rnr_timer = 12;
  a.ah_attr.is_global = 1;
  memcpy(a.ah_attr.grh.dgid.raw, p->gid, 16);
  a.ah_attr.grh.sgid_index = (uint8_t)gid_index;
  a.ah_attr.grh.hop_limit = 64;
  a.ah_attr.port_num = 1;
  if (ibv_modify_qp(qp, &a,
                    IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                        IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
    return -1;
  memset(&a, 0, sizeof(a));
  a.qp_state = IBV_QPS_RTS;
  a.timeout = 14;
  a.retry_cnt = 7;
  a.rnr_retry = 7;
  a.sq_psn = my_psn;
  a.max_rd_atomic = 1;
  return ibv_modify_qp(qp, &a,
                       IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                           IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC);
}

int main(int argc, char** argv) {
  const int server = argc == 5 && strcmp(argv[1], "server") == 0;
  if (!server && !(argc == 6 && strcmp(argv[1], "client") == 0)) {
    fprintf(stderr,
            "usage: %s server DEVICE GID_INDEX PORT\n"
            "       %s client DEVICE GID_INDEX PORT SERVER_IPV4\n",
            argv[0], argv[0]);
    return 2;
  }
  const int gid_index = atoi(argv[3]), port = atoi(argv[4]);

  /* Everything below is released at the end, on every path. */
  hugemm_runtime* rt = NULL;
  hugemm_buffer buf = {0};
  hugemm_mr_cache* cache = NULL;
  struct ibv_context* ctx = NULL;
  struct ibv_pd* pd = NULL;
  struct ibv_cq* cq = NULL;
  struct ibv_qp* qp = NULL;
  hugemm_mr *whole = NULL, *mr = NULL;
  int fd = -1, status = 1;

  /* hugemm: a 2M huge page, and a cache of registrations of it. */
  if (hugemm_open(NULL, &rt) < 0 || hugemm_map_buffer(rt, 2u << 20, NULL, &buf) < 0 ||
      hugemm_mr_cache_create(rt, NULL, &cache) < 0) {
    fail(hugemm_last_error());
    goto out;
  }

  /* The device: a protection domain, a completion queue, a queue pair. */
  struct ibv_device** list = ibv_get_device_list(NULL);
  for (int i = 0; list != NULL && list[i] != NULL && ctx == NULL; ++i)
    if (strcmp(ibv_get_device_name(list[i]), argv[2]) == 0) ctx = ibv_open_device(list[i]);
  if (list != NULL) ibv_free_device_list(list);
  if (ctx == NULL) {
    fail("no such RDMA device");
    goto out;
  }
  pd = ibv_alloc_pd(ctx);
  cq = pd ? ibv_create_cq(ctx, 4, NULL, NULL, 0) : NULL;
  qp = cq ? make_qp(pd, cq) : NULL;
  struct ibv_port_attr port_attr;
  union ibv_gid gid;
  if (qp == NULL || ibv_query_port(ctx, 1, &port_attr) || ibv_query_gid(ctx, 1, gid_index, &gid)) {
    fail("cannot set up the queue pair");
    goto out;
  }

  /* The whole buffer for the peer to write into: a miss, which registers it. */
  const int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  if (hugemm_mr_get(cache, pd, buf.data, buf.size, access, &whole) < 0) {
    fail(hugemm_last_error());
    goto out;
  }
  struct peer mine = {qp->qp_num,
                      (uint32_t)(getpid() & 0xffffff),
                      {0},
                      (uint64_t)(uintptr_t)buf.data,
                      hugemm_mr_rkey(whole),
                      0};
  struct peer theirs;
  memcpy(mine.gid, gid.raw, 16);
  fd = tcp_connect(server, server ? NULL : argv[5], port);
  if (fd < 0 || exchange(fd, &mine, &theirs, sizeof(mine)) < 0) {
    fail("cannot swap queue-pair details over TCP");
    goto out;
  }
  if (connect_qp(qp, &theirs, mine.psn, gid_index, port_attr.active_mtu)) {
    fail("cannot connect the queue pair");
    goto out;
  }

  char ok = 0, done = 1;
  if (!server) {
    /* One RDMA WRITE of 1 MiB, under a registration of just those bytes: a hit. */
    unsigned char* src = buf.data;
    for (size_t i = 0; i < MESSAGE_BYTES; ++i) src[i] = pattern(i);
    if (hugemm_mr_get(cache, pd, src, MESSAGE_BYTES, access, &mr) < 0) {
      fail(hugemm_last_error());
      goto out;
    }
    struct ibv_sge sge = {(uintptr_t)src, MESSAGE_BYTES, hugemm_mr_lkey(mr)};
    struct ibv_send_wr wr, *bad;
    memset(&wr, 0, sizeof(wr));
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_RDMA_WRITE;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.wr.rdma.remote_addr = theirs.addr;
    wr.wr.rdma.rkey = theirs.rkey;
    if (ibv_post_send(qp, &wr, &bad)) {
      fail("ibv_post_send failed");
      goto out;
    }
    struct ibv_wc wc;
    int n;
    while ((n = ibv_poll_cq(cq, 1, &wc)) == 0) {
    }
    if (n < 0 || wc.status != IBV_WC_SUCCESS) {
      fail("the RDMA WRITE failed");
      goto out;
    }
    hugemm_mr_put(mr); /* the work request completed: the memory may move on */
    mr = NULL;
    if (write(fd, &done, 1) != 1 || read(fd, &ok, 1) != 1 || !ok) {
      fail("the server did not see the bytes sent");
      goto out;
    }
    printf("client: wrote %u bytes into the server's hugemm buffer\n", MESSAGE_BYTES);
  } else {
    /* The client says when its write completed; then every byte must be there. */
    if (read(fd, &done, 1) != 1) {
      fail("the client went away");
      goto out;
    }
    const unsigned char* dst = buf.data;
    size_t i = 0;
    while (i < MESSAGE_BYTES && dst[i] == pattern(i)) ++i;
    ok = i == MESSAGE_BYTES;
    if (write(fd, &ok, 1) != 1) {
      fail("cannot answer the client");
      goto out;
    }
    if (!ok) {
      fail("the bytes written are not the bytes sent");
      goto out;
    }
    printf("server: %u bytes arrived by RDMA WRITE, every one as sent\n", MESSAGE_BYTES);
  }

  hugemm_mr_cache_stats stats;
  hugemm_mr_cache_stats_get(cache, &stats);
  printf("%s: MR cache %llu hits, %llu misses\n", argv[1], (unsigned long long)stats.hits,
         (unsigned long long)stats.misses);
  status = 0;

out:
  /* A queue pair destroyed before the registrations go: a work request still posted on a
   * failed path ends with it. */
  if (qp != NULL) ibv_destroy_qp(qp);
  hugemm_mr_put(mr);
  hugemm_mr_put(whole);
  if (fd >= 0) close(fd);
  if (cq != NULL) ibv_destroy_cq(cq);
  hugemm_mr_cache_destroy(cache); /* deregisters before the PD goes */
  if (pd != NULL) ibv_dealloc_pd(pd);
  if (ctx != NULL) ibv_close_device(ctx);
  if (buf.data != NULL) hugemm_free(rt, buf.data);
  hugemm_close(rt);
  return status;
}
