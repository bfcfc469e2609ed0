"""The studies' helpers: independent single-thread runs on a few worker processes, and their output."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def run_pool(fn, jobs, workers: int):
    """``[fn(job) for job in jobs]`` on ``workers`` spawned processes (1: in this process), in the jobs' order.
    ``fn`` must be a module-level function (it is pickled by name)."""
    if workers <= 1:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


def write_section(lines, out, json_path=None, payload=None):
    """A study's markdown section to ``out`` (and its raw results to ``json_path``), echoed on stdout."""
    import json
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(payload, f)
    print("\n".join(lines))
    print(f"wrote {out}")
