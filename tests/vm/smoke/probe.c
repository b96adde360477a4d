// The device checks of the VM smoke tests that a shell cannot do: map a PCI BAR,
// drive the VFIO ioctls, ask the kernel where a huge page lives. Run inside the VM.
//
//   vm_probe bar0 BDF        map BAR0 through sysfs resource0 (the device bound to
//                            uio_pci_generic) and print the NVMe CAP and VS registers
//   vm_probe vfio BDF        open BDF's VFIO group (bound to vfio-pci), attach it to a
//                            type-1 IOMMU container, map and unmap a buffer for DMA, and
//                            print CAP and VS read through the device's BAR0 region
//   vm_probe hugepage-node   fault in one private 2M huge page and print the node that
//                            move_pages reports and the page's line of numa_maps
//
// Exit 0 on success, 1 with a message on stderr on any failure, 2 on bad usage.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { kHugePage = 2 << 20, kBarMap = 4096 };
// NVMe controller registers (NVMe base specification, "Controller Registers").
enum { kRegCapLo = 0x0, kRegCapHi = 0x4, kRegVs = 0x8 };

static int Fail(const char* what) {
  fprintf(stderr, "vm_probe: %s: %s\n", what, strerror(errno));
  return 1;
}

static int FailMsg(const char* what) {
  fprintf(stderr, "vm_probe: %s\n", what);
  return 1;
}

// One line a test can compare between the two ways of reaching BAR0.
static void PrintNvmeRegisters(uint64_t cap, uint32_t vs) {
  printf("nvme CAP=0x%016" PRIx64 " VS=%u.%u.%u MQES=%u DSTRD=%u CSS=0x%02x\n", cap, vs >> 16,
         (vs >> 8) & 0xff, vs & 0xff, (unsigned)(cap & 0xffff), (unsigned)((cap >> 32) & 0xf),
         (unsigned)((cap >> 37) & 0xff));
}

static int Bar0(const char* bdf) {
  char path[256];
  snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/resource0", bdf);
  int fd = open(path, O_RDWR | O_SYNC);
  if (fd < 0) return Fail(path);
  volatile uint32_t* regs = mmap(NULL, kBarMap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (regs == MAP_FAILED) return Fail("mmap of resource0");
  // 32-bit loads: every PCI BAR takes them.
  uint64_t cap = regs[kRegCapLo / 4] | (uint64_t)regs[kRegCapHi / 4] << 32;
  uint32_t vs = regs[kRegVs / 4];
  munmap((void*)regs, kBarMap);
  PrintNvmeRegisters(cap, vs);
  return 0;
}

static int ReadRegion32(int device, uint64_t offset, uint32_t* value) {
  return pread(device, value, sizeof *value, (off_t)offset) == (ssize_t)sizeof *value ? 0 : -1;
}

// The IOMMU part of a userspace driver's start, up to the first register read.
static int VfioSteps(const char* bdf, int container, int group) {
  if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) {
    return FailMsg("unexpected VFIO API version");
  }
  int type = VFIO_TYPE1v2_IOMMU;
  if (ioctl(container, VFIO_CHECK_EXTENSION, type) <= 0) type = VFIO_TYPE1_IOMMU;
  if (ioctl(container, VFIO_CHECK_EXTENSION, type) <= 0) {
    return FailMsg("the container offers no type-1 IOMMU");
  }
  struct vfio_group_status status = {.argsz = sizeof status};
  if (ioctl(group, VFIO_GROUP_GET_STATUS, &status) < 0) return Fail("VFIO_GROUP_GET_STATUS");
  if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
    return FailMsg("the group is not viable (a device of it is bound to another driver)");
  }
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0) {
    return Fail("VFIO_GROUP_SET_CONTAINER");
  }
  if (ioctl(container, VFIO_SET_IOMMU, type) < 0) return Fail("VFIO_SET_IOMMU");
  struct vfio_iommu_type1_info info = {.argsz = sizeof info};
  if (ioctl(container, VFIO_IOMMU_GET_INFO, &info) < 0) return Fail("VFIO_IOMMU_GET_INFO");
  printf("vfio type %s, IOVA page sizes 0x%" PRIx64 "%s%s%s\n",
         type == VFIO_TYPE1v2_IOMMU ? "1v2" : "1", (uint64_t)info.iova_pgsizes,
         info.iova_pgsizes & (1ULL << 12) ? " 4K" : "",
         info.iova_pgsizes & (1ULL << 21) ? " 2M" : "",
         info.iova_pgsizes & (1ULL << 30) ? " 1G" : "");

  // A DMA mapping round trip: the IOMMU takes a buffer at an IOVA and gives it back.
  void* buf = mmap(NULL, kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) return Fail("mmap of the DMA buffer");
  memset(buf, 0, kHugePage);
  struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map,
                                         .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                         .vaddr = (uintptr_t)buf,
                                         .iova = 1ULL << 30,
                                         .size = kHugePage};
  int rc = ioctl(container, VFIO_IOMMU_MAP_DMA, &map);
  struct vfio_iommu_type1_dma_unmap unmap = {
      .argsz = sizeof unmap, .iova = map.iova, .size = map.size};
  if (rc == 0) rc = ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap);
  munmap(buf, kHugePage);
  if (rc < 0) return Fail("VFIO_IOMMU_MAP_DMA/UNMAP_DMA of 2 MiB at IOVA 1 GiB");
  if (unmap.size != kHugePage) return FailMsg("VFIO_IOMMU_UNMAP_DMA unmapped a different size");
  printf("vfio DMA map and unmap of 2 MiB at IOVA 0x%" PRIx64 ": ok\n", (uint64_t)map.iova);

  int device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (device < 0) return Fail("VFIO_GROUP_GET_DEVICE_FD");
  struct vfio_region_info region = {.argsz = sizeof region, .index = VFIO_PCI_BAR0_REGION_INDEX};
  uint32_t cap_lo = 0, cap_hi = 0, vs = 0;
  rc = ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &region);
  if (rc == 0 && (ReadRegion32(device, region.offset + kRegCapLo, &cap_lo) < 0 ||
                  ReadRegion32(device, region.offset + kRegCapHi, &cap_hi) < 0 ||
                  ReadRegion32(device, region.offset + kRegVs, &vs) < 0)) {
    rc = -1;
  }
  int saved = errno;
  close(device);
  errno = saved;
  if (rc < 0) return Fail("reading BAR0 through the VFIO device");
  printf("vfio BAR0 region: %" PRIu64 " bytes\n", (uint64_t)region.size);
  PrintNvmeRegisters(cap_lo | (uint64_t)cap_hi << 32, vs);
  return 0;
}

static int Vfio(const char* bdf) {
  char link[256], target[256];
  snprintf(link, sizeof link, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) return Fail(link);
  target[n] = '\0';
  char group_path[300];
  snprintf(group_path, sizeof group_path, "/dev/vfio/%s", basename(target));
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) return Fail("/dev/vfio/vfio");
  int group = open(group_path, O_RDWR);
  if (group < 0) {
    close(container);
    return Fail(group_path);
  }
  printf("vfio group %s\n", group_path);
  int rc = VfioSteps(bdf, container, group);
  close(group);
  close(container);
  return rc;
}

static int HugepageNode(void) {
  char* page = mmap(NULL, kHugePage, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (page == MAP_FAILED) return Fail("mmap of a 2M huge page");
  memset(page, 0x5a, kHugePage);
  void* pages[1] = {page};
  int node = -1;
  // nodes == NULL: report where each page is, move nothing.
  if (syscall(SYS_move_pages, 0, 1UL, pages, NULL, &node, 0) < 0) return Fail("move_pages");
  if (node < 0) {
    errno = -node;
    return Fail("move_pages status of the page");
  }
  printf("node %d\n", node);
  FILE* maps = fopen("/proc/self/numa_maps", "r");
  if (maps == NULL) return Fail("/proc/self/numa_maps");
  char line[1024];
  char start[32];
  snprintf(start, sizeof start, "%lx ", (unsigned long)(uintptr_t)page);
  int found = 0;
  while (fgets(line, sizeof line, maps) != NULL) {
    if (strncmp(line, start, strlen(start)) == 0) {
      printf("numa_maps %s", line);
      found = 1;
    }
  }
  fclose(maps);
  munmap(page, kHugePage);
  return found ? 0 : FailMsg("the page has no line in /proc/self/numa_maps");
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "bar0") == 0) return Bar0(argv[2]);
  if (argc == 3 && strcmp(argv[1], "vfio") == 0) return Vfio(argv[2]);
  if (argc == 2 && strcmp(argv[1], "hugepage-node") == 0) return HugepageNode();
  fprintf(stderr, "usage: vm_probe bar0 BDF | vfio BDF | hugepage-node\n");
  return 2;
}
