// Device map parsing: see device_map.h.
#include "dist/device_map.h"

#include <cstdlib>

namespace qilin {
namespace {

// A whole non-negative decimal number, or -1.
int64_t parse_count(const std::string& s) {
  if (s.empty() || s.size() > 9) return -1;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
  }
  return std::strtoll(s.c_str(), nullptr, 10);
}

}  // namespace

Result<DeviceMap> parse_device_map(const std::string& spec, int32_t n_layer) {
  DeviceMap map;
  if (spec.empty()) return errorf("--device-map is empty (example: 0-14:cpu,15-29:cpu)");
  size_t at = 0;
  int32_t next = 0;  // the layer the next entry must start at
  while (at <= spec.size()) {
    size_t comma = spec.find(',', at);
    if (comma == std::string::npos) comma = spec.size();
    const std::string e = spec.substr(at, comma - at);
    at = comma + 1;
    const size_t colon = e.find(':');
    if (colon == std::string::npos) {
      return errorf("--device-map entry '%s' has no ':DEVICE' (example: 0-14:cpu)", e.c_str());
    }
    const std::string range = e.substr(0, colon), dev = e.substr(colon + 1);
    DeviceMapEntry d;
    const size_t dash = range.find('-');
    const int64_t a = parse_count(range.substr(0, dash));
    const int64_t b = dash == std::string::npos ? a : parse_count(range.substr(dash + 1));
    if (a < 0 || b < 0) {
      return errorf("--device-map entry '%s': '%s' is not a layer or a FIRST-LAST range", e.c_str(),
                    range.c_str());
    }
    if (b < a) return errorf("--device-map entry '%s': the range ends before it starts", e.c_str());
    if (b >= n_layer) {
      return errorf(
          "--device-map entry '%s': layer %lld does not exist (the model has layers "
          "0-%d)",
          e.c_str(), static_cast<long long>(b), n_layer - 1);
    }
    if (a != next) {
      return a < next ? errorf("--device-map entry '%s': layer %lld is already assigned", e.c_str(),
                               static_cast<long long>(a))
                      : errorf(
                            "--device-map entry '%s': layers %d-%lld are not assigned to any "
                            "device",
                            e.c_str(), next, static_cast<long long>(a - 1));
    }
    d.first = static_cast<int32_t>(a);
    d.last = static_cast<int32_t>(b);
    next = d.last + 1;
    auto indexed = [&](const char* prefix, DeviceKind kind, int64_t lo) -> Status {
      const int64_t i = parse_count(dev.substr(std::string(prefix).size()));
      if (i < lo) {
        return errorf("--device-map entry '%s': '%s' needs a number >= %lld after '%s'", e.c_str(),
                      dev.c_str(), static_cast<long long>(lo), prefix);
      }
      d.kind = kind;
      d.index = static_cast<int32_t>(i);
      return Status::ok();
    };
    if (dev == "cpu") {
      d.kind = DeviceKind::Cpu;
    } else if (dev.rfind("cuda:", 0) == 0) {
      QILIN_TRY(indexed("cuda:", DeviceKind::Cuda, 0));
    } else if (dev.rfind("stage:", 0) == 0) {
      QILIN_TRY(indexed("stage:", DeviceKind::Stage, 1));
    } else {
      return errorf("--device-map entry '%s': unknown device '%s' (cpu, cuda:N or stage:N)",
                    e.c_str(), dev.c_str());
    }
    map.entries.push_back(d);
    if (comma == spec.size()) break;
  }
  if (next != n_layer) {
    return errorf("--device-map leaves layers %d-%d unassigned (the model has %d layers)", next,
                  n_layer - 1, n_layer);
  }
  return map;
}

Result<std::vector<int32_t>> stage_boundaries(const DeviceMap& map, int32_t pp) {
  std::vector<int32_t> first;
  bool stages = false, devices = false;
  for (const DeviceMapEntry& e : map.entries) {
    const std::string name = std::to_string(e.first) + "-" + std::to_string(e.last);
    if (e.kind == DeviceKind::Cuda) {
      return errorf(
          "--device-map entry %s:cuda:%d: this build runs layers on cpu only (the "
          "CUDA forward pass is not built)",
          name.c_str(), e.index);
    }
    if (e.kind == DeviceKind::Cpu) {
      devices = true;
      continue;
    }
    stages = true;
    const int32_t s = e.index;  // 1-based
    if (s > pp) {
      return errorf("--device-map entry %s:stage:%d: there are %d pipeline stages (--pp %d)",
                    name.c_str(), s, pp, pp);
    }
    const int32_t have = static_cast<int32_t>(first.size());
    if (s == have) continue;  // the same stage goes on
    if (s != have + 1) {
      return errorf(
          "--device-map entry %s:stage:%d: stages must follow in layer order; the "
          "previous entry was stage %d",
          name.c_str(), s, have);
    }
    first.push_back(e.first);
  }
  if (stages && devices) {
    return errorf("--device-map mixes stage:N and device entries; give one or the other");
  }
  if (!stages) {
    if (pp > 1) {
      return errorf(
          "--device-map names devices only; with --pp %d give each layer range a "
          "stage:N (1..%d)",
          pp, pp);
    }
    return std::vector<int32_t>{0};
  }
  if (static_cast<int32_t>(first.size()) != pp) {
    return errorf("--device-map names %zu pipeline stages, --pp is %d", first.size(), pp);
  }
  return first;
}

}  // namespace qilin
