"""Rebuild the vendored test fixtures in tests/data/ from the shared datasets (provenance, not run by tests).

Every record is copied unchanged (the original ``Structure.as_dict()`` rows, CIF, POSCAR and csv lines); only the
selection is made here. Run from the repository root::

    python tests/data/make_fixtures.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Chosen for the cases the tests need (see README.md in this folder for what each one covers).
MP3000 = [
    "mp-71", "mp-81", "mp-8640",  # the three single-site cells
    "mp-1004524", "mp-1013530", "mp-1013537",  # an atom without a neighbour within 4 Å
    "mp-570552", "mp-555543",  # lattice vectors of 101.8 and 75.6 Å
    "mp-706664", "mp-23660", "mp-1019797",  # 184, 154 and 104 sites
    "mp-695694",  # an H pair at 0.749 Å (the shortest in the set)
    "mp-1018133", "mp-555464",  # elements of equal electronegativity (formula tie order)
    "mp-10010", "mp-1001011", "mp-1001016", "mp-10015", "mp-1002197", "mp-10044", "mp-1004525",
    "mp-10052", "mp-1005666", "mp-1005690",  # the first ordinary entries of the set
]
MP20 = ["mp-754382", "mp-76", "mp-21",  # single-site He, Sr, Ca
        "mp-1019742",  # Si4 O8 He4: He has no Pauling electronegativity (NaN)
        "mp-1027692",  # 40.9 Å lattice vector
        "mp-604321",  # Rb: no neighbour within 5 Å
        "mp-1114523", "mp-568005",  # isolated at 4 Å
        "mp-862620", "mp-4105"]  # electronegativity ties
DEVSETS = {
    "mp_devset_200": ["mp-devset-001", "mp-devset-002", "mp-devset-014", "mp-devset-022"],
    "oqmd_devset_200": ["oqmd-devset-044", "oqmd-devset-100", "oqmd-devset-120"],
    "alexandria_devset_98": ["agm006002483"],
    "carolina_devset_100": ["carolina-20", "carolina-90"],
}
PHONONS = [0, 1, 36, 187, 369]  # integer index as in the genuine matbench file; 36 is isolated at 4 Å
CIF_IDX = ["6", "7", "10"]  # CGCNN idx of mp-10010, mp-1001011, mp-1001016
JARVIS = ["JVASP-21210", "JVASP-28634", "JVASP-63912", "JVASP-64003", "JVASP-1372", "JVASP-1996"]  # 1 site; 34 Å; isolated at 4 Å x2


def _write_gz_json(path: Path, doc: object) -> None:
    raw = json.dumps(doc).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:  # mtime 0: the same bytes on every rebuild
        gz.write(raw)
    path.write_bytes(buf.getvalue())


def _subset_matbench(src: Path, keep: list, dst: Path) -> None:
    with gzip.open(src, "rt") as f:
        doc = json.load(f)
    pos = {k: i for i, k in enumerate(doc["index"])}
    missing = [k for k in keep if k not in pos]
    if missing:
        raise SystemExit(f"{src}: ids not found: {missing}")
    _write_gz_json(dst, {"index": keep, "columns": doc["columns"], "data": [doc["data"][pos[k]] for k in keep]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "data")
    shared = ap.parse_args().shared

    _subset_matbench(shared / "mp_eform_cgcnn_3000/mp_eform_cgcnn_3000_matbench.json.gz", MP3000,
                     HERE / "mp_eform_cgcnn_3000_sample.json.gz")
    _subset_matbench(shared / "mp20_subset_1355/mp20_subset_1355_matbench.json.gz", MP20,
                     HERE / "mp20_subset_sample.json.gz")
    _subset_matbench(shared / "matbench_phonons_1265/matbench_phonons.json.gz", PHONONS,
                     HERE / "matbench_phonons_sample.json.gz")
    index, data, columns = [], [], None
    for name, keep in DEVSETS.items():
        with gzip.open(shared / "matsciml_devsets" / f"{name}.json.gz", "rt") as f:
            doc = json.load(f)
        pos = {k: i for i, k in enumerate(doc["index"])}
        columns = doc["columns"]
        index += keep
        data += [doc["data"][pos[k]] for k in keep]
    _write_gz_json(HERE / "matsciml_devsets_sample.json.gz", {"index": index, "columns": columns, "data": data})

    cif_dir = HERE / "cif_dir"
    shutil.rmtree(cif_dir, ignore_errors=True)
    cif_dir.mkdir()
    with tarfile.open(shared / "mp_eform_cgcnn_3000" / "cifs.tar.gz") as tar:
        for idx in CIF_IDX:
            member = tar.extractfile(f"mp_eform_cgcnn_3000/{idx}.cif")
            assert member is not None
            (cif_dir / f"{idx}.cif").write_bytes(member.read())
    lines = (shared / "mp_eform_cgcnn_3000" / "id_prop.csv").read_text().splitlines()
    (cif_dir / "id_prop.csv").write_text("\n".join(ln for ln in lines if ln.split(",")[0] in CIF_IDX) + "\n")

    poscar_dir = HERE / "poscar_dir"
    shutil.rmtree(poscar_dir, ignore_errors=True)
    poscar_dir.mkdir()
    src = shared / "alignn_jarvis_bandgap_50"
    for jid in JARVIS:
        shutil.copyfile(src / f"POSCAR-{jid}.vasp", poscar_dir / f"POSCAR-{jid}.vasp")  # not the read-only mode
    with open(src / "id_prop.csv", newline="") as f:
        rows = [r for r in csv.reader(f) if r and r[0].removeprefix("POSCAR-").removesuffix(".vasp") in JARVIS]
    (poscar_dir / "id_prop.csv").write_text("".join(f"{a},{b}\n" for a, b in rows))
    records = json.loads((src / "jarvis_format_derived.json").read_text())
    keep = [r for r in records if r["jid"] in JARVIS]
    (HERE / "jarvis_sample.json").write_text(json.dumps(keep))

    # the MP-20 / CDVAE csv layout: the header line and the rows of MP20, each copied as it is in the file
    with open(shared / "mp20_subset_1355" / "mp20_subset_1355.csv", newline="") as f:
        text = f.read()
    rows = list(csv.reader(io.StringIO(text, newline="")))
    raw = _raw_csv_records(text)
    assert len(raw) == len(rows), "a record of the csv spans a line break that the reader did not see"
    wanted = [i for i, r in enumerate(rows) if i == 0 or r[1] in MP20]
    (HERE / "mp20_sample.csv").write_text("".join(raw[i] for i in wanted), newline="")


def _raw_csv_records(text: str) -> list[str]:
    """The csv's records as the exact text of each (quoted fields may hold newlines)."""
    out, start, quoted = [], 0, False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "\n" and not quoted:
            out.append(text[start:i + 1])
            start = i + 1
    if start < len(text):
        out.append(text[start:])
    return out


if __name__ == "__main__":
    main()
