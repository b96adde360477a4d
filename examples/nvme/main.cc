// hugemm-nvme: a userspace NVMe driver on hugemm memory, from the command line.
//
//   hugemm-nvme 0000:00:04.0 identify
//   hugemm-nvme 0000:00:04.0 read 0 65536 out.bin --memory hugetlb:1G
//   hugemm-nvme 0000:00:04.0 write 2048 in.bin --memory devdax:/dev/dax0.0 --give-back nvme
//   hugemm-nvme 0000:00:04.0 read 0 4096 --iova
//
// It takes the function from its kernel driver (uio_pci_generic: physical addresses, no
// IOMMU; with --iova vfio-pci behind the IOMMU, hugemm's IOVA mapper on its container),
// maps BAR0, turns on bus mastering, starts the controller with its queues in hugemm
// memory and moves data through a hugemm buffer.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "nvme/controller.h"
#include "nvme/pci.h"
#include "nvme/vfio.h"

namespace {

struct Args {
  std::string bdf, command;
  std::vector<std::string> positional;
  std::string memory = "hugetlb:2M";
  std::string give_back;
  bool keep_driver = false;
  bool iova = false;
  bool help = false;
};

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: hugemm-nvme BDF COMMAND [ARGS] [OPTIONS]\n"
               "  identify               the controller and namespace 1\n"
               "  read LBA BYTES [FILE]  READ into a hugemm buffer; into FILE, or a hex dump\n"
               "                         of the first 256 bytes\n"
               "  write LBA FILE         WRITE FILE (whole blocks) from a hugemm buffer\n"
               "options:\n"
               "  --memory M        queues and data in M: hugetlb:2M (default), hugetlb:1G,\n"
               "                    devdax:/dev/daxX.Y\n"
               "  --iova            IOVA mode: vfio-pci behind the IOMMU, addresses from\n"
               "                    hugemm's IOVA mapper (default: uio_pci_generic and\n"
               "                    physical addresses)\n"
               "  --keep-driver     leave the function's driver alone (it must be\n"
               "                    uio_pci_generic, or vfio-pci with --iova)\n"
               "  --give-back DRV   hand the function to DRV (e.g. nvme) at the end\n");
}

bool Parse(int argc, char** argv, Args* args) {
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--memory" || a == "--give-back") && i + 1 == argc) {
      std::fprintf(stderr, "hugemm-nvme: %s needs a value\n", a.c_str());
      return false;
    } else if (a == "--memory") {
      args->memory = argv[++i];
    } else if (a == "--give-back") {
      args->give_back = argv[++i];
    } else if (a == "--keep-driver") {
      args->keep_driver = true;
    } else if (a == "--iova") {
      args->iova = true;
    } else if (a == "--help" || a == "-h") {
      args->help = true;
      return true;
    } else if (a.rfind("-", 0) == 0) {
      std::fprintf(stderr, "hugemm-nvme: unknown option %s\n", a.c_str());
      return false;
    } else {
      rest.push_back(a);
    }
  }
  if (rest.size() < 2) return false;
  args->bdf = rest[0];
  args->command = rest[1];
  args->positional.assign(rest.begin() + 2, rest.end());
  return true;
}

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "hugemm-nvme: %s\n", std::string(st.message()).c_str());
  return 1;
}

void HexDump(const std::byte* data, size_t n) {
  for (size_t i = 0; i < n; i += 16) {
    std::printf("%06zx ", i);
    for (size_t j = i; j < i + 16 && j < n; ++j) std::printf(" %02x", unsigned(data[j]));
    std::printf("\n");
  }
}

int Run(const Args& args, nvme::Controller& ctrl, hugemm::Runtime& rt,
        const nvme::MemorySpec& spec) {
  const nvme::ControllerInfo& info = ctrl.info();
  if (args.command == "identify") {
    std::printf("controller  %04x \"%s\" serial \"%s\" firmware \"%s\" NVMe %u.%u.%u\n",
                info.vendor, info.model.c_str(), info.serial.c_str(), info.firmware.c_str(),
                info.version >> 16, (info.version >> 8) & 0xff, info.version & 0xff);
    std::printf("transfers   up to %s per command, %zu in flight\n",
                hugemm::HumanBytes(ctrl.max_transfer()).c_str(), ctrl.slots());
    std::printf("namespace 1 %llu blocks of %u bytes (%s)\n",
                static_cast<unsigned long long>(ctrl.ns().blocks), ctrl.ns().block_size,
                hugemm::HumanBytes(ctrl.ns().bytes()).c_str());
    std::printf("memory      %s\n", spec.Name().c_str());
    return 0;
  }
  uint64_t lba = 0, bytes = 0;
  std::vector<char> file;
  if (args.command == "read" && args.positional.size() >= 2 &&
      absl::SimpleAtoi(args.positional[0], &lba) && absl::SimpleAtoi(args.positional[1], &bytes)) {
  } else if (args.command == "write" && args.positional.size() == 2 &&
             absl::SimpleAtoi(args.positional[0], &lba)) {
    std::ifstream in(args.positional[1], std::ios::binary);
    if (!in) return Fail(absl::NotFoundError("cannot read " + args.positional[1]));
    file.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    bytes = (file.size() + ctrl.ns().block_size - 1) / ctrl.ns().block_size * ctrl.ns().block_size;
  } else {
    Usage(stderr);
    return 2;
  }
  if (bytes == 0) return Fail(absl::InvalidArgumentError("nothing to transfer"));
  // A buffer of whole pages of the chosen memory, at least `bytes`.
  absl::StatusOr<size_t> page = spec.PageSize();
  if (!page.ok()) return Fail(page.status());
  absl::StatusOr<hugemm::Buffer> buf =
      rt.MapBuffer((bytes + *page - 1) / *page * *page, spec.ForBuffer());
  if (!buf.ok()) return Fail(buf.status());
  if (args.command == "write") {
    std::memcpy(buf->data(), file.data(), file.size());
    // Device-DAX memory keeps what it held: the last block's tail is zeroed here.
    std::memset(buf->data() + file.size(), 0, bytes - file.size());
    if (absl::Status st = ctrl.Write(lba, buf->data(), bytes); !st.ok()) return Fail(st);
    std::printf("wrote %llu bytes at block %llu\n", static_cast<unsigned long long>(bytes),
                static_cast<unsigned long long>(lba));
    return 0;
  }
  if (absl::Status st = ctrl.Read(lba, buf->data(), bytes); !st.ok()) return Fail(st);
  if (args.positional.size() == 3) {
    std::ofstream out(args.positional[2], std::ios::binary);
    out.write(reinterpret_cast<const char*>(buf->data()), static_cast<std::streamsize>(bytes));
    if (!out) return Fail(absl::InternalError("cannot write " + args.positional[2]));
  } else {
    HexDump(buf->data(), std::min<size_t>(bytes, 256));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!Parse(argc, argv, &args)) {
    Usage(stderr);
    return 2;
  }
  if (args.help) {
    Usage(stdout);
    return 0;
  }
  absl::StatusOr<nvme::MemorySpec> spec = nvme::ParseMemorySpec(args.memory);
  if (!spec.ok()) return Fail(spec.status());
  nvme::PciFunction fn(args.bdf);
  absl::StatusOr<bool> is_nvme = fn.IsNvme();
  if (!is_nvme.ok()) return Fail(is_nvme.status());
  if (!*is_nvme) return Fail(absl::InvalidArgumentError(args.bdf + " is not an NVMe controller"));
  if (!args.keep_driver) {
    absl::Status st = fn.BindDriver(args.iova ? "vfio-pci" : "uio_pci_generic");
    if (!st.ok()) return Fail(st);
  }
  absl::StatusOr<std::unique_ptr<hugemm::Runtime>> rt = hugemm::Runtime::Open();
  if (!rt.ok()) return Fail(rt.status());
  int rc = 0;
  {
    // Dropped in reverse: the controller (shut down), BAR0, the mapper (its IOVAs), the
    // VFIO descriptors; all before the function changes hands.
    std::unique_ptr<nvme::VfioFunction> vfio;
    std::unique_ptr<hugemm::IovaMapper> mapper;
    absl::StatusOr<nvme::MappedBar> bar = absl::UnknownError("");
    if (args.iova) {
      absl::StatusOr<std::unique_ptr<nvme::VfioFunction>> opened =
          nvme::VfioFunction::Open(args.bdf);
      if (!opened.ok()) return Fail(opened.status());
      vfio = std::move(*opened);
      absl::StatusOr<std::unique_ptr<hugemm::IovaMapper>> attached =
          hugemm::IovaMapper::Attach(**rt, vfio->container_fd());
      if (!attached.ok()) return Fail(attached.status());
      mapper = std::move(*attached);
      if (absl::Status st = vfio->EnableBusMaster(); !st.ok()) return Fail(st);
      bar = vfio->MapBar0();
    } else {
      if (absl::Status st = fn.EnableBusMaster(); !st.ok()) return Fail(st);
      bar = fn.MapBar0();
    }
    if (!bar.ok()) return Fail(bar.status());
    absl::StatusOr<std::unique_ptr<nvme::Controller>> ctrl =
        nvme::Controller::Start(**rt, bar->registers(), {.memory = *spec, .iova = mapper.get()});
    if (!ctrl.ok()) return Fail(ctrl.status());
    rc = Run(args, **ctrl, **rt, *spec);
  }
  if (!args.give_back.empty()) {
    if (absl::Status st = fn.BindDriver(args.give_back); !st.ok()) return Fail(st);
  }
  return rc;
}
