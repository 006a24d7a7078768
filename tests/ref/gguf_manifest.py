#!/usr/bin/env python3
"""Writes the manifest of a GGUF file as JSON on stdout, in the format of
../shared/fixtures/tinyseek-kjv/tinyseek-kjv-f32.manifest.json: every metadata key with its
type and value (arrays as count + sha256 of json.dumps(list, ensure_ascii=False)), every tensor
with name, type, shape (ggml order) and the sha256 of its bytes. Plain Python, no numpy.

usage: gguf_manifest.py FILE.gguf            manifest JSON
       gguf_manifest.py FILE.gguf A.json     compare with manifest A.json; prints the
                                             differences, exit 1 if any
"""
import hashlib
import json
import struct
import sys

VT = {0: ("UINT8", "<B"), 1: ("INT8", "<b"), 2: ("UINT16", "<H"), 3: ("INT16", "<h"),
      4: ("UINT32", "<I"), 5: ("INT32", "<i"), 6: ("FLOAT32", "<f"), 7: ("BOOL", "<?"),
      10: ("UINT64", "<Q"), 11: ("INT64", "<q"), 12: ("FLOAT64", "<d")}
# ggml type id -> (name, block size, bytes per block)
GT = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
      6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 10: ("Q2_K", 256, 84),
      11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
      14: ("Q6_K", 256, 210), 30: ("BF16", 1, 2)}


class Reader:
    def __init__(self, data):
        self.d, self.p = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.d, self.p)[0]
        self.p += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.d[self.p:self.p + n].decode("utf-8")
        self.p += n
        return s

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("<I"), self.take("<Q")
            return ("ARRAY", [self.value(et) for _ in range(n)])
        return self.take(VT[t][1])


def manifest(path):
    data = open(path, "rb").read()
    r = Reader(data)
    assert r.take("<I") == 0x46554747, "not a GGUF file"
    r.take("<I")
    n_t, n_kv = r.take("<Q"), r.take("<Q")
    meta, align = {}, 32
    for _ in range(n_kv):
        key, t = r.string(), r.take("<I")
        v = r.value(t)
        if t == 9:
            lst = v[1]
            h = hashlib.sha256(json.dumps(lst, ensure_ascii=False).encode()).hexdigest()
            meta[key] = {"type": "ARRAY", "value": {"count": len(lst), "sha256": h}}
        else:
            meta[key] = {"type": "STRING" if t == 8 else VT[t][0], "value": v}
        if key == "general.alignment":
            align = v
    infos = []
    for _ in range(n_t):
        name, nd = r.string(), r.take("<I")
        ne = [r.take("<Q") for _ in range(nd)]
        t, off = r.take("<I"), r.take("<Q")
        infos.append((name, ne, t, off))
    base = (r.p + align - 1) // align * align
    tensors = []
    for name, ne, t, off in infos:
        tn, bs, ts = GT[t]
        n = 1
        for d in ne:
            n *= d
        nbytes = n // bs * ts
        h = hashlib.sha256(data[base + off:base + off + nbytes]).hexdigest()
        tensors.append({"name": name, "type": tn, "shape": ne, "sha256": h})
    return {"metadata": meta, "tensors": tensors}


def compare(got, want):
    diffs = []
    gm, wm = got["metadata"], want["metadata"]
    for k in wm:
        if k not in gm:
            diffs.append(f"key {k}: missing")
        elif gm[k] != wm[k]:
            diffs.append(f"key {k}: {gm[k]} != {wm[k]}")
    diffs += [f"key {k}: extra" for k in gm if k not in wm]
    if list(gm) != list(wm) and not diffs:
        diffs.append("key order differs")
    gt = {t["name"]: t for t in got["tensors"]}
    for t in want["tensors"]:
        g = gt.get(t["name"])
        if g is None:
            diffs.append(f"tensor {t['name']}: missing")
        elif g != t:
            diffs.append(f"tensor {t['name']}: {g} != {t}")
    names = [t["name"] for t in want["tensors"]]
    diffs += [f"tensor {n}: extra" for n in gt if n not in names]
    if [t["name"] for t in got["tensors"]] != names and not diffs:
        diffs.append("tensor order differs")
    return diffs


if __name__ == "__main__":
    m = manifest(sys.argv[1])
    if len(sys.argv) > 2:
        d = compare(m, json.load(open(sys.argv[2])))
        for line in d:
            print(line)
        sys.exit(1 if d else 0)
    json.dump(m, sys.stdout, indent=1, ensure_ascii=False)
