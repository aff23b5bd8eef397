// --device-map: which device or pipeline stage runs which layers, e.g. "0-14:cpu,15-29:cuda:0"
// or "0-9:stage:1,10-29:stage:2" (stages counted from 1, as `qilin topology` prints them).
// Entries are FIRST-LAST or one layer N, then ':' and a device; together they must cover every
// layer once, in order. Errors quote the entry at fault.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qilin/status.h"

namespace qilin {

enum class DeviceKind { Cpu, Cuda, Stage };

struct DeviceMapEntry {
  int32_t first = 0, last = 0;  // layers [first, last], inclusive as written
  DeviceKind kind = DeviceKind::Cpu;
  int32_t index = 0;  // cuda:N's N, stage:N's N (1-based)
};

struct DeviceMap {
  std::vector<DeviceMapEntry> entries;  // in layer order
};

Result<DeviceMap> parse_device_map(const std::string& spec, int32_t n_layer);

// The first layer of each of pp pipeline stages. A map of stage entries must name stages
// 1..pp in increasing layer order (a stage may have several adjacent entries); cpu entries
// carry no split. cuda entries fail while this build has no CUDA forward pass.
Result<std::vector<int32_t>> stage_boundaries(const DeviceMap& map, int32_t pp);

}  // namespace qilin
