#!/usr/bin/env python3
"""Merges reference documents written by cpu_reference.py / cpu_live_reference.py (one run each,
e.g. one --freeze/--train setting per run) into one: the models lists are concatenated in the
order given, generated_by becomes the list of the runs' commands, every other top-level field
must be equal in all inputs.

Usage: python3 tools/merge_reference.py -o OUT.json IN.json [IN.json ...]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import memfit_torch as mt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    out = None
    for path in args.inputs:
        with open(path) as f:
            doc = json.load(f)
        cmd = doc.pop("generated_by")
        models = doc.pop("models")
        if out is None:
            out = dict(doc, generated_by=[], models=[])
        else:
            for k, v in doc.items():
                if out.get(k) != v:
                    sys.exit("%s: field %r differs from the first input's" % (path, k))
            missing = set(out) - set(doc) - {"generated_by", "models"}
            if missing:
                sys.exit("%s lacks %s" % (path, ", ".join(sorted(missing))))
        out["generated_by"] += cmd if isinstance(cmd, list) else [cmd]
        out["models"] += models
    mt.write_json(out, args.output)


if __name__ == "__main__":
    main()
