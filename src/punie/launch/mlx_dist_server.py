"""One rank of a distributed mlx_lm.server (``server.backend = "mlx-distributed"``).

mlx.launch runs a script path with ``--python`` on every host (``-m module`` is not accepted), so
Punie ships this two-line script and passes its path (copied next to the model on remote hosts).
Rank 0 serves HTTP; the others join the group (mlx_lm.server decides by ``mx.distributed``).
"""

from mlx_lm.server import main

if __name__ == "__main__":
    main()
