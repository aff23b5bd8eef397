#!/usr/bin/env python3
# Dumps an index of a GGUF file with the independent reference reader (gguf-py's GGUFReader):
# every metadata key with its type and scalar value (or array element type, length and first/last
# elements), and every tensor's name, type id, shape, offset and byte size. test_gguf.cc compares
# Qilin's reader against it.
#
# Usage: python tests/golden/gen_gguf_index.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
#            tests/golden/gguf_model_index.json
import json
import os
import sys

from gguf import GGUFReader, GGUFValueType


def scalar(field, part_index):
    """The value of one scalar element of a field as a JSON value."""
    part = field.parts[part_index]
    vtype = field.types[-1]
    if vtype == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    if vtype == GGUFValueType.BOOL:
        return bool(part[0])
    if vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(part[0])
    return int(part[0])


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: gen_gguf_index.py MODEL.gguf OUT.json")
    path, out = sys.argv[1], sys.argv[2]
    r = GGUFReader(path)

    kvs = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):  # header fields that gguf-py exposes as pseudo-keys
            continue
        entry = {"key": key, "type": int(field.types[0])}
        if field.types[0] == GGUFValueType.ARRAY:
            entry["elem_type"] = int(field.types[1]) if len(field.types) > 1 else None
            entry["length"] = len(field.data)
            # Nested arrays are not present in real models; only sample flat arrays.
            if len(field.types) == 2 and len(field.data) > 0:
                entry["first"] = scalar(field, field.data[0])
                entry["last"] = scalar(field, field.data[-1])
        else:
            entry["value"] = scalar(field, field.data[0])
        kvs.append(entry)

    tensors = []
    for t in r.tensors:
        tensors.append({
            "name": t.name,
            "type": int(t.tensor_type),
            # gguf-py reports ggml order: shape[0] is the contiguous (row) dimension.
            "ne": [int(x) for x in t.shape],
            "offset": int(t.data_offset - r.data_offset),  # relative to the data section
            "n_bytes": int(t.n_bytes),
        })

    index = {
        "file": os.path.basename(path),
        "file_size": os.path.getsize(path),
        "version": int(r.fields["GGUF.version"].parts[-1][0]),
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "kvs": kvs,
        "tensors": tensors,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    main()
