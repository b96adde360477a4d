// An RC queue pair on a soft-RoCE port, and the TCP link beside it.
#include "tests/verbs/rc_endpoint.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>
#include <utility>

#include "absl/strings/str_format.h"

namespace hugemm::testing {
namespace {

absl::Status Errno(const std::string& what, int err) {
  return absl::InternalError(absl::StrFormat("%s: %s", what, std::strerror(err)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<RcEndpoint>> RcEndpoint::Open(const std::string& device,
                                                             int gid_index) {
  std::unique_ptr<RcEndpoint> ep(new RcEndpoint());
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) return Errno("ibv_get_device_list", errno);
  for (int i = 0; i < n && ep->context_ == nullptr; ++i) {
    if (device == ibv_get_device_name(list[i])) ep->context_ = ibv_open_device(list[i]);
  }
  ibv_free_device_list(list);
  if (ep->context_ == nullptr) {
    return absl::NotFoundError(absl::StrFormat("no RDMA device %s could be opened", device));
  }
  ep->gid_index_ = gid_index;
  if (ibv_query_gid(ep->context_, 1, gid_index, &ep->gid_) != 0) {
    return Errno(absl::StrFormat("ibv_query_gid(%s, port 1, index %d)", device, gid_index), errno);
  }
  ibv_port_attr port{};
  if (ibv_query_port(ep->context_, 1, &port) != 0) return Errno("ibv_query_port", errno);
  ep->mtu_ = port.active_mtu;
  ep->pd_ = ibv_alloc_pd(ep->context_);
  if (ep->pd_ == nullptr) return Errno("ibv_alloc_pd", errno);
  ep->cq_ = ibv_create_cq(ep->context_, 2 * kDepth, nullptr, nullptr, 0);
  if (ep->cq_ == nullptr) return Errno("ibv_create_cq", errno);
  ibv_qp_init_attr init{};
  init.send_cq = ep->cq_;
  init.recv_cq = ep->cq_;
  init.qp_type = IBV_QPT_RC;
  init.cap.max_send_wr = kDepth;
  init.cap.max_recv_wr = kDepth;
  init.cap.max_send_sge = 1;
  init.cap.max_recv_sge = 1;
  ep->qp_ = ibv_create_qp(ep->pd_, &init);
  if (ep->qp_ == nullptr) return Errno("ibv_create_qp", errno);
  ep->psn_ = std::random_device()() & 0xffffff;
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_INIT;
  attr.port_num = 1;
  attr.pkey_index = 0;
  attr.qp_access_flags = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  if (int err = ibv_modify_qp(
          ep->qp_, &attr, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
    return Errno("ibv_modify_qp(INIT)", err);
  }
  return ep;
}

RcEndpoint::~RcEndpoint() {
  if (qp_ != nullptr) ibv_destroy_qp(qp_);
  if (cq_ != nullptr) ibv_destroy_cq(cq_);
  if (pd_ != nullptr) ibv_dealloc_pd(pd_);
  if (context_ != nullptr) ibv_close_device(context_);
}

PeerInfo RcEndpoint::Info() const {
  PeerInfo info;
  info.qpn = qp_->qp_num;
  info.psn = psn_;
  std::memcpy(info.gid, gid_.raw, sizeof(info.gid));
  return info;
}

absl::Status RcEndpoint::Connect(const PeerInfo& peer) {
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_RTR;
  attr.path_mtu = mtu_;
  attr.dest_qp_num = peer.qpn;
  attr.rq_psn = peer.psn;
  attr.max_dest_rd_atomic = 16;
  attr.min_rnr_timer = 12;
  attr.ah_attr.is_global = 1;
  std::memcpy(attr.ah_attr.grh.dgid.raw, peer.gid, sizeof(peer.gid));
  attr.ah_attr.grh.sgid_index = static_cast<uint8_t>(gid_index_);
  attr.ah_attr.grh.hop_limit = 64;
  attr.ah_attr.port_num = 1;
  if (int err =
          ibv_modify_qp(qp_, &attr,
                        IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                            IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) {
    return Errno("ibv_modify_qp(RTR)", err);
  }
  attr = {};
  attr.qp_state = IBV_QPS_RTS;
  attr.timeout = 14;
  attr.retry_cnt = 7;
  attr.rnr_retry = 7;
  attr.sq_psn = psn_;
  attr.max_rd_atomic = 16;
  if (int err = ibv_modify_qp(qp_, &attr,
                              IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                                  IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)) {
    return Errno("ibv_modify_qp(RTS)", err);
  }
  return absl::OkStatus();
}

namespace {

absl::Status PostSendWr(ibv_qp* qp, ibv_wr_opcode op, const void* local, size_t length,
                        uint32_t lkey, uint64_t remote, uint32_t rkey, uint64_t wr_id) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(local), static_cast<uint32_t>(length), lkey};
  ibv_send_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = op;
  wr.send_flags = IBV_SEND_SIGNALED;
  wr.wr.rdma.remote_addr = remote;
  wr.wr.rdma.rkey = rkey;
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(qp, &wr, &bad)) return Errno("ibv_post_send", err);
  return absl::OkStatus();
}

}  // namespace

absl::Status RcEndpoint::PostWrite(const void* local, size_t length, uint32_t lkey, uint64_t remote,
                                   uint32_t rkey, uint64_t wr_id) {
  return PostSendWr(qp_, IBV_WR_RDMA_WRITE, local, length, lkey, remote, rkey, wr_id);
}

absl::Status RcEndpoint::PostRead(void* local, size_t length, uint32_t lkey, uint64_t remote,
                                  uint32_t rkey, uint64_t wr_id) {
  return PostSendWr(qp_, IBV_WR_RDMA_READ, local, length, lkey, remote, rkey, wr_id);
}

absl::Status RcEndpoint::PostSend(const void* local, size_t length, uint32_t lkey, uint64_t wr_id) {
  return PostSendWr(qp_, IBV_WR_SEND, local, length, lkey, 0, 0, wr_id);
}

absl::Status RcEndpoint::PostRecv(void* local, size_t length, uint32_t lkey, uint64_t wr_id) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(local), static_cast<uint32_t>(length), lkey};
  ibv_recv_wr wr{};
  wr.wr_id = wr_id;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  if (int err = ibv_post_recv(qp_, &wr, &bad)) return Errno("ibv_post_recv", err);
  return absl::OkStatus();
}

absl::StatusOr<ibv_wc> RcEndpoint::Poll(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  ibv_wc wc{};
  while (true) {
    const int n = ibv_poll_cq(cq_, 1, &wc);
    if (n < 0) return absl::InternalError("ibv_poll_cq failed");
    if (n == 1) return wc;
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat("no completion within %d ms", timeout_ms));
    }
    std::this_thread::yield();
  }
}

absl::Status RcEndpoint::Complete(int n, int timeout_ms) {
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<ibv_wc> wc = Poll(timeout_ms);
    if (!wc.ok()) return wc.status();
    if (wc->status != IBV_WC_SUCCESS) {
      return absl::InternalError(absl::StrFormat("work request %u (opcode %d) failed: %s",
                                                 wc->wr_id, static_cast<int>(wc->opcode),
                                                 ibv_wc_status_str(wc->status)));
    }
  }
  return absl::OkStatus();
}

// ---- TcpLink ----------------------------------------------------------------------------

absl::StatusOr<TcpLink> TcpLink::Accept(int port) {
  const int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (ls < 0) return Errno("socket", errno);
  const int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(ls, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(ls, 1) != 0) {
    const int err = errno;
    close(ls);
    return Errno(absl::StrFormat("listening on port %d", port), err);
  }
  const int fd = accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  const int err = errno;
  close(ls);
  if (fd < 0) return Errno("accept", err);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return TcpLink(fd);
}

absl::StatusOr<TcpLink> TcpLink::Connect(const std::string& host, int port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrFormat("%s is not an IPv4 address", host));
  }
  // The server may not listen yet: try for a while.
  for (int attempt = 0;; ++attempt) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Errno("socket", errno);
    if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) {
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return TcpLink(fd);
    }
    const int err = errno;
    close(fd);
    if (attempt == 600) return Errno(absl::StrFormat("connecting to %s:%d", host, port), err);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

TcpLink::TcpLink(TcpLink&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

TcpLink& TcpLink::operator=(TcpLink&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

TcpLink::~TcpLink() {
  if (fd_ >= 0) close(fd_);
}

absl::Status TcpLink::Send(const void* data, size_t length) {
  auto* p = static_cast<const char*>(data);
  while (length > 0) {
    const ssize_t n = send(fd_, p, length, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Errno("send", n < 0 ? errno : EPIPE);
    p += n;
    length -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status TcpLink::Recv(void* data, size_t length) {
  auto* p = static_cast<char*>(data);
  while (length > 0) {
    const ssize_t n = recv(fd_, p, length, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return absl::UnavailableError("the peer closed the connection");
    if (n < 0) return Errno("recv", errno);
    p += n;
    length -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> TcpLink::Swap(uint64_t word) {
  if (absl::Status st = Send(&word, sizeof(word)); !st.ok()) return st;
  uint64_t theirs = 0;
  if (absl::Status st = Recv(&theirs, sizeof(theirs)); !st.ok()) return st;
  return theirs;
}

}  // namespace hugemm::testing
