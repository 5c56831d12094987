"""search: architecture search over archir graphs (DESIGN.md, "Search").

Modules (import them directly; this package imports nothing so ``import search.x`` stays light):
    search.spaces: search spaces (``get_space``: ``"chain"``, ``"darts"``); ``search.morph`` adds
        ``"start"`` (grow a start graph: the built-in starter or a graph file).
    search.data: datasets (``load_dataset("digits")``, ``.npz``, image folders).
    search.train: ``train(graph, dataset, TrainConfig(...))`` -> metrics and trained weights.
    search.strategies: ask/tell strategies (``get_strategy``: ``"random"``, ``"evolution"``,
        ``"reinforce"`` (NAS-RL, with ``search.controller``), ``"pnas"``, ``"hillclimb"`` (NASH),
        ``"petridish"`` (with ``search.petridish``)).
    search.oneshot: one-shot drivers that train a supernet (``"darts"``, ``"snas"``, ``"parsec"``,
        ``"enas"``); ``run_search`` hands them to ``search.oneshot.run_oneshot``.
    search.executors: where candidates run (``get_executor``: ``"serial"``, ``"process"``, ``"ray"``).
    search.store: the SQLite store of a run (every candidate, resumable).
    search.experiment: the search loop (``ExperimentConfig``, ``run_search``), gallery and export.
    search.pareto: the Pareto frontier, its plot and a verified ONNX export.

Example:
    >>> from search.experiment import ExperimentConfig, run_search      # doctest: +SKIP
    >>> s = run_search(ExperimentConfig(budget="20c", objective="macs"), "runs/demo")  # doctest: +SKIP
    >>> s.best.metrics["test_error"], [c.id for c in s.frontier]          # doctest: +SKIP
"""
