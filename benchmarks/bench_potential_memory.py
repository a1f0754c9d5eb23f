"""Peak memory against the number of frames, colab_kit and the anchors' own data paths side by side, each under the
same memory ceiling (default 12 GiB, a free Colab runtime): the frame count at which an anchor dies and colab_kit
finishes.

For each ``--sizes`` N: MPtrj-shaped frames (``mptrj_like.py``: CHGNet's MPtrj JSON layout, mean ~30 atoms), then
four contenders, one subprocess each, all with the same batch size and ``--steps`` optimiser steps of CHGNet's efsm
(or M3GNet's efs) training:

``colab_kit``  for each of ``--models`` (CHGNet, M3GNet): ``python -m colab_kit convert <json> --task potential
               --model M`` (2 workers), then ``fit`` on the store for ``--steps`` steps: the plan of a 12 GiB machine
               (``detect()`` with its RAM set to the ceiling), the given batch size, mode ``full``.
``chgnet``     CHGNet's MPtrj path as its training scripts use it: the whole JSON loaded (``chgnet.utils.read_json``
               is ``json.load`` of the file; here of the .gz), ``StructureJsonData(data, model.graph_converter,
               targets="efsm")``, ``get_train_val_test_loader(train_ratio=0.9, val_ratio=0.05)``, the pretrained
               ``CHGNet.load()`` and ``Trainer(targets="efsm", optimizer="Adam", scheduler="CosLR",
               criterion="MSE")`` for one epoch whose loaders stop after ``--steps`` (validation after 2) batches.
               ``StructureJsonData`` builds each graph in ``__getitem__``: what it holds is the JSON.
``matgl``      matgl 4.1.2's PES example on the same frames: the JSON loaded, ``Structure.from_dict`` for every
               frame, labels as lists (energies eV total, forces eV/A, stresses GPa = -0.1 x kBar),
               ``MGLDataset(structures, Structure2Graph(DEFAULT_ELEMENTS, 5.0), labels, save_cache=False)`` (every
               graph built and held up front), ``split_dataset([0.9, 0.05, 0.05])``, ``MGLDataLoader(collate_fn_pes
               (include_stress=True), num_workers=0)``, ``M3GNet(is_intensive=False)`` from scratch,
               ``PotentialLightningModule(element_refs=fit_element_refs(train), stress_weight=0.1)`` and
               ``lightning.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=2,
               inference_mode=False)``.

The harness watches each process tree and SIGKILLs it when its RSS passes the ceiling: that is what a 12 GiB runtime's
kernel does (on Colab, the session restarts). A killed contender's record says which phase it was in (its progress
file) and its RSS then. ``--anchors`` picks the anchors; a size at which an anchor died is not tried again for that
anchor at a larger size (``--keep-trying`` tries anyway). An existing data file, or a complete store, in
``--workdir`` is reused (a 400,000-frame file takes ~5 min to write, its store ~10 min to convert).

Usage::

    python benchmarks/bench_potential_memory.py --sizes 25000,100000,400000 --steps 10 --batch-size 8 \\
        --workdir /tmp/potential_memory --out /tmp/potential_memory.json
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from harness import GB, REPO, BenchRun, print_table, read_json, run_watched, tail

PROGRESS = textwrap.dedent("""
    import json, os, time, psutil
    _T0 = time.perf_counter()
    _PROGRESS = sys.argv[-1]
    _PHASES = []

    def mark(phase):
        rss = psutil.Process().memory_info().rss / 2**20
        _PHASES.append({"phase": phase, "t_s": round(time.perf_counter() - _T0, 1), "rss_mb": round(rss)})
        tmp = _PROGRESS + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"phase": phase, "phases": _PHASES}, f)
        os.replace(tmp, _PROGRESS)
        print(phase, f"{rss:.0f} MB", flush=True)
""")

COLAB_KIT = "import sys\n" + PROGRESS + textwrap.dedent("""
    import dataclasses
    from colab_kit.plan import detect, make_plan
    from colab_kit.store import GraphStore
    from colab_kit.training import fit

    store_dir, model, out = sys.argv[1], sys.argv[2], sys.argv[3]
    steps, batch, ceiling = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    mark("start")
    store = GraphStore(store_dir)
    machine = detect()
    machine = dataclasses.replace(machine, ram_total=min(machine.ram_total, ceiling),
                                  ram_available=min(machine.ram_available, ceiling))
    plan = make_plan(machine, "full", model=model, task="potential", epochs=1, batch_size=batch,
                     checkpoint_minutes=1e3)
    polls = {"n": 0}

    def stop():
        polls["n"] += 1
        if polls["n"] == 1:
            mark("training")
        return polls["n"] > steps

    res = fit(store, plan, out, progress=False, should_stop=stop)
    mark(f"done: {res.status}")
""")

CHGNET = "import sys\n" + PROGRESS + textwrap.dedent("""
    import gzip, itertools, tempfile

    path, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mark("start")
    with gzip.open(path, "rt") as f:  # chgnet.utils.read_json: json.load of the whole file
        data = json.load(f)
    mark("json loaded")
    from chgnet.data.dataset import StructureJsonData
    from chgnet.model import CHGNet
    from chgnet.trainer import Trainer

    model = CHGNet.load()
    dataset = StructureJsonData(data, graph_converter=model.graph_converter, targets="efsm")
    train, val, test = dataset.get_train_val_test_loader(train_ratio=0.9, val_ratio=0.05, batch_size=batch,
                                                         num_workers=0, pin_memory=False)
    mark(f"dataset of {len(dataset)} frames")

    class First:  # the epoch's first k batches
        def __init__(self, loader, k):
            self.loader, self.k = loader, k

        def __iter__(self):
            return itertools.islice(iter(self.loader), self.k)

        def __len__(self):
            return min(self.k, len(self.loader))

    trainer = Trainer(model=model, targets="efsm", optimizer="Adam", scheduler="CosLR", criterion="MSE", epochs=1,
                      learning_rate=1e-3, use_device="cpu", print_freq=10**9)
    mark("training")
    with tempfile.TemporaryDirectory() as save_dir:
        trainer.train(First(train, steps), First(val, 2), None, save_dir=save_dir)
    mark("done")
""")

MATGL = "import sys\n" + PROGRESS + textwrap.dedent("""
    import gzip, tempfile
    from functools import partial

    path, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mark("start")
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    mark("json loaded")
    import lightning as L
    from matgl.config import DEFAULT_ELEMENTS
    from matgl.ext.pymatgen import Structure2Graph
    from matgl.graph.data import MGLDataLoader, MGLDataset, collate_fn_pes, split_dataset
    from matgl.models import M3GNet
    from matgl.utils.training import PotentialLightningModule, fit_element_refs
    from pymatgen.core import Structure

    structures, energies, forces, stresses = [], [], [], []
    for frames in data.values():
        for d in frames.values():
            structures.append(Structure.from_dict(d["structure"]))
            energies.append(d["corrected_total_energy"])
            forces.append(d["force"])
            stresses.append([[-0.1 * x for x in row] for row in d["stress"]])
    del data
    mark(f"{len(structures)} structures")
    L.seed_everything(0)
    with tempfile.TemporaryDirectory() as root:
        dataset = MGLDataset(structures=structures, converter=Structure2Graph(DEFAULT_ELEMENTS, 5.0),
                             labels={"energies": energies, "forces": forces, "stresses": stresses},
                             include_line_graph=False, save_cache=False, root=root)
        mark(f"MGLDataset of {len(dataset)} graphs")
        train, val, test = split_dataset(dataset, frac_list=[0.9, 0.05, 0.05], shuffle=True, random_state=0)
        collate = partial(collate_fn_pes, include_line_graph=False, include_stress=True)
        train_loader, val_loader, _ = MGLDataLoader(train_data=train, val_data=val, test_data=test,
                                                    collate_fn=collate, batch_size=batch, num_workers=0)
        refs = fit_element_refs([structures[i] for i in train.indices], [energies[i] for i in train.indices],
                                DEFAULT_ELEMENTS)
        model = M3GNet(element_types=DEFAULT_ELEMENTS, is_intensive=False, cutoff=5.0)
        lit = PotentialLightningModule(model=model, element_refs=refs, lr=1e-3, stress_weight=0.1)
        trainer = L.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=2, num_sanity_val_steps=0,
                            accelerator="cpu", devices=1, inference_mode=False, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, default_root_dir=root)
        mark("training")
        trainer.fit(model=lit, train_dataloaders=train_loader, val_dataloaders=val_loader)
    mark("done")
""")


def contender(name: str, cmd: list[str], work: Path, tag: str, ceiling: int, marks: bool = True) -> dict:
    """Run ``cmd`` under the ceiling; with ``marks`` its last argument is a progress file it keeps (``PROGRESS``)."""
    progress = work / f"{tag}.progress.json"
    progress.unlink(missing_ok=True)
    rec = run_watched([*cmd, str(progress)] if marks else cmd, ceiling=ceiling, name=tag, logdir=work / "logs",
                      progress_file=progress if marks else None)
    last = read_json(progress) if progress.exists() else {}
    out = {"wall_s": round(rec["wall_s"], 1), "peak_tree_rss_mb": round(rec["peak_tree_rss_mb"]),
           "returncode": rec["returncode"], "killed_by": rec["killed_by"], "phases": last.get("phases", [])}
    if rec["killed_by"] == "ceiling":
        out["died_in"] = last.get("phase", "before its first phase")
    elif rec["returncode"] != 0:
        out["failed"] = tail(rec["stderr"], 6)
    print(f"  {name}: {'OOM at the ceiling in ' + out['died_in'] if 'died_in' in out else 'failed' if 'failed' in out else 'finished'}"
          f", peak {out['peak_tree_rss_mb']} MB, {out['wall_s']} s", flush=True)
    return out


def verdict(r: dict | None) -> str:
    if r is None:
        return "not tried (died at a smaller size)"
    if "died_in" in r:
        return f"killed at the ceiling ({r['died_in']})"
    return "failed" if "failed" in r else "finished"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="25000,100000,400000")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--ceiling-gb", type=float, default=12.0, help="GiB; the process tree is killed above it")
    ap.add_argument("--anchors", default="chgnet,matgl")
    ap.add_argument("--models", default="chgnet,m3gnet", help="colab_kit's models (CHGNet beside CHGNet's Trainer, "
                                                             "M3GNet beside matgl's)")
    ap.add_argument("--keep-trying", action="store_true", help="try an anchor at sizes above the one it died at")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    ceiling = int(args.ceiling_gb * GB)
    anchors = [a for a in args.anchors.split(",") if a]
    models = [m for m in args.models.split(",") if m]
    scripts = {"chgnet": CHGNET, "matgl": MATGL}
    with BenchRun(args.out, args.workdir, "ck-potential-memory-", benchmark="bench_potential_memory",
                  sizes=args.sizes, steps=args.steps, batch_size=args.batch_size, ceiling_gb=args.ceiling_gb,
                  anchors=anchors, models=models) as bench:
        res, work = bench.results, bench.workdir
        dead: set[str] = set()
        rows = []
        for n in (int(s) for s in args.sizes.split(",")):
            print(f"{n} frames", flush=True)
            data = work / f"mptrj_{n}.json.gz"
            if not data.exists():
                gen = run_watched([sys.executable, str(REPO / "benchmarks" / "mptrj_like.py"), "--n", str(n),
                                   "--out", str(data), "--no-progress"], ceiling=20 * GB, name=f"gen-{n}",
                                  logdir=work / "logs")
                if gen["returncode"] != 0:
                    raise SystemExit(f"mptrj_like --n {n} failed:\n{tail(gen['stderr'])}")
            row: dict = {"data_bytes": data.stat().st_size}
            for m in models:
                store = work / f"store_{m}_{n}"
                row[f"colab_kit_{m}_convert"] = contender(
                    f"colab_kit convert ({m})", [sys.executable, "-m", "colab_kit", "convert", str(data), "--task",
                                                 "potential", "--model", m, "--out", str(store), "--workers",
                                                 str(args.workers)], work, f"convert-{m}-{n}", ceiling, marks=False)
                row[f"colab_kit_{m}"] = contender(
                    f"colab_kit train ({m})", [sys.executable, "-c", COLAB_KIT, str(store), m,
                                               str(work / f"train_{m}_{n}"), str(args.steps), str(args.batch_size),
                                               str(ceiling)], work, f"train-{m}-{n}", ceiling)
            for a in anchors:
                if a in dead and not args.keep_trying:
                    row[a] = None
                    continue
                row[a] = contender(a, [sys.executable, "-c", scripts[a], str(data), str(args.steps),
                                       str(args.batch_size)], work, f"{a}-{n}", ceiling)
                if row[a] and "died_in" in row[a]:
                    dead.add(a)
            res[str(n)] = row
            bench.save()
            cells = [n]
            for m in models:
                conv, ours = row[f"colab_kit_{m}_convert"], row[f"colab_kit_{m}"]
                cells.append(f"{conv['peak_tree_rss_mb']} / {ours['peak_tree_rss_mb']}: "
                             f"{verdict(conv)} / {verdict(ours)}")
            cells += [f"{row[a]['peak_tree_rss_mb'] if row[a] else '-'}: {verdict(row[a])}" for a in anchors]
            rows.append(cells)
        print_table(f"peak RSS (MB) under a {args.ceiling_gb:g} GiB ceiling, MPtrj-shaped frames, batch "
                    f"{args.batch_size}, {args.steps} steps",
                    ["frames", *[f"colab_kit {m} convert / train" for m in models], *anchors], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
