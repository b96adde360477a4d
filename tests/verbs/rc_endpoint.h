// Test plumbing for RDMA in the VM: one end of a reliable-connected queue pair on a
// soft-RoCE port, and a TCP link to swap what each end needs to know about the other.
#ifndef HUGEMM_TESTS_VERBS_RC_ENDPOINT_H_
#define HUGEMM_TESTS_VERBS_RC_ENDPOINT_H_

#include <infiniband/verbs.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hugemm::testing {

// What the other end needs: the queue pair and its port's GID, and a buffer it may reach.
struct PeerInfo {
  uint32_t qpn = 0;
  uint32_t psn = 0;
  uint8_t gid[16] = {};
  uint64_t addr = 0;  // a buffer of this end's, for RDMA WRITE and READ
  uint64_t length = 0;
  uint32_t rkey = 0;
  uint32_t pad = 0;
};

class RcEndpoint {
 public:
  // A protection domain, a completion queue and an RC queue pair on port 1 of `device`,
  // addressed through GID `gid_index` (RoCE v2).
  static absl::StatusOr<std::unique_ptr<RcEndpoint>> Open(const std::string& device, int gid_index);
  ~RcEndpoint();
  RcEndpoint(const RcEndpoint&) = delete;
  RcEndpoint& operator=(const RcEndpoint&) = delete;

  ibv_pd* pd() const { return pd_; }
  // This end's queue pair and GID (addr, length and rkey left for the caller).
  PeerInfo Info() const;
  // INIT -> RTR -> RTS towards `peer`.
  absl::Status Connect(const PeerInfo& peer);

  absl::Status PostWrite(const void* local, size_t length, uint32_t lkey, uint64_t remote,
                         uint32_t rkey, uint64_t wr_id);
  absl::Status PostRead(void* local, size_t length, uint32_t lkey, uint64_t remote, uint32_t rkey,
                        uint64_t wr_id);
  absl::Status PostSend(const void* local, size_t length, uint32_t lkey, uint64_t wr_id);
  absl::Status PostRecv(void* local, size_t length, uint32_t lkey, uint64_t wr_id);
  // The next completion, within `timeout_ms`; its status is the caller's to check.
  absl::StatusOr<ibv_wc> Poll(int timeout_ms = 60000);
  // `n` completions, every one successful.
  absl::Status Complete(int n, int timeout_ms = 60000);

  static constexpr int kDepth = 64;  // work requests outstanding per queue, at most

 private:
  RcEndpoint() = default;

  ibv_context* context_ = nullptr;
  ibv_pd* pd_ = nullptr;
  ibv_cq* cq_ = nullptr;
  ibv_qp* qp_ = nullptr;
  int gid_index_ = 0;
  ibv_gid gid_{};
  ibv_mtu mtu_ = IBV_MTU_1024;
  uint32_t psn_ = 0;
};

// A TCP connection that moves whole messages, for the queue-pair details and for the two
// ends to keep step.
class TcpLink {
 public:
  static absl::StatusOr<TcpLink> Accept(int port);  // listens on every address
  static absl::StatusOr<TcpLink> Connect(const std::string& host, int port);
  TcpLink(TcpLink&& other) noexcept;
  TcpLink& operator=(TcpLink&& other) noexcept;
  ~TcpLink();

  absl::Status Send(const void* data, size_t length);
  absl::Status Recv(void* data, size_t length);
  // One 64-bit word each way: send ours, return theirs.
  absl::StatusOr<uint64_t> Swap(uint64_t word);

 private:
  explicit TcpLink(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace hugemm::testing

#endif  // HUGEMM_TESTS_VERBS_RC_ENDPOINT_H_
