// The MR cache's hit (include/hugemm/verbs.h) beside the pin and unpin it contains, on
// this machine's CPU: `hugemm bench mr` needs an RDMA device and so runs in the VM, under
// TCG, where every atomic is emulated. Registrations here come from a registrar that
// asks no device (a hit never calls it); the cache does not know the difference.
//   MrCacheHit2M           Get of a 2M buffer and the handle's release, cached
//   Baseline_PinUnpin2M    the pin and unpin of the one folio under it, alone
#include <infiniband/verbs.h>

#include <memory>

#include "benchmark/benchmark.h"
#include "hugemm/runtime.h"
#include "hugemm/verbs.h"

namespace hugemm {
namespace {

// Hands out blank ibv_mr records: what a miss needs, without a device.
class NoDeviceRegistrar : public MrRegistrar {
 public:
  absl::StatusOr<ibv_mr*> Register(ibv_pd* pd, void* addr, size_t length, int) override {
    auto* mr = new ibv_mr{};
    mr->pd = pd;
    mr->addr = addr;
    mr->length = length;
    return mr;
  }
  absl::Status Deregister(ibv_mr* mr) override {
    delete mr;
    return absl::OkStatus();
  }
};

struct MrFixture {
  std::unique_ptr<Runtime> rt;
  Buffer buf;
  NoDeviceRegistrar registrar;
  std::unique_ptr<MrCache> cache;
  ibv_pd* pd = reinterpret_cast<ibv_pd*>(&registrar);  // never dereferenced
  std::string error;

  static MrFixture& Get() {
    static MrFixture* f = [] {
      auto* fx = new MrFixture();
      absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Open({.kernel_pins = false});
      if (!rt.ok()) {
        fx->error = std::string(rt.status().message());
        return fx;
      }
      fx->rt = std::move(*rt);
      absl::StatusOr<Buffer> b = fx->rt->MapBuffer(kPageSize2M);
      absl::StatusOr<std::unique_ptr<MrCache>> c =
          MrCache::Create(*fx->rt, {.registrar = &fx->registrar});
      if (!b.ok() || !c.ok()) {
        fx->error = std::string((b.ok() ? c.status() : b.status()).message());
        return fx;
      }
      fx->buf = std::move(*b);
      fx->cache = std::move(*c);
      return fx;
    }();
    return *f;
  }
};

void BM_MrCacheHit2M(benchmark::State& state) {
  MrFixture& fx = MrFixture::Get();
  if (!fx.error.empty()) {
    state.SkipWithError(fx.error.c_str());
    return;
  }
  const int access = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;
  { absl::StatusOr<MrHandle> warm = fx.cache->Get(fx.pd, fx.buf.data(), fx.buf.size(), access); }
  for (auto _ : state) {
    absl::StatusOr<MrHandle> h = fx.cache->Get(fx.pd, fx.buf.data(), fx.buf.size(), access);
    benchmark::DoNotOptimize(h);
  }
  if (fx.cache->Stats().misses != 1) state.SkipWithError("the loop did not only hit");
}
BENCHMARK(BM_MrCacheHit2M);

void BM_Baseline_PinUnpin2M(benchmark::State& state) {
  MrFixture& fx = MrFixture::Get();
  if (!fx.error.empty()) {
    state.SkipWithError(fx.error.c_str());
    return;
  }
  for (auto _ : state) {
    FolioSpan span;
    absl::StatusOr<size_t> n = fx.rt->pinner().PinFolios(
        fx.buf.data(), kPageSize2M, kGupPin | kGupWrite, absl::MakeSpan(&span, 1));
    benchmark::DoNotOptimize(n);
    fx.rt->pinner().UnpinFolios(absl::MakeConstSpan(&span, 1), RefKind::kPin, true);
  }
}
BENCHMARK(BM_Baseline_PinUnpin2M);

}  // namespace
}  // namespace hugemm
