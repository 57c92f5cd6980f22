"""What the tests and the benchmarks share. One module a concern:

* ``paths``: the repository root (put on ``sys.path``) and the bundled market data.
* ``env``: ``clean_env()``, this environment without any variable the product reads.
* ``net``: ``free_port()``.
* ``cli``: ``run_bollmin()``, the real ``bollmin.py`` as a subprocess.
* ``bot``: the running bot as a subprocess (``Bot``) and its DB (``query``, ``status``), ``wait_for``,
  ``write_config``, ``tail``.
* ``sim``: the simulated exchange in a thread (``running_sim``), its test keys and control API (``ctl``).
* ``dbs``: dashboard DBs built from real candles (``build_dashboard_db``) and stored sweeps (``add_sweep``).
* ``web``: the dashboard through Flask's test client (``make_cfg``, ``login``, ``csrf_from``).
* ``lab``: the strategy lab's helpers (settings, engine-versus-evaluator checks, generated candles).
* ``catcher``: a local webhook that catches notifications.

Fixtures stay in ``tests/conftest.py`` and the test modules; what they share is here, so no test
imports from ``conftest`` or from another test module. Benchmarks put ``tests/`` on ``sys.path``
and import from here too.
"""
