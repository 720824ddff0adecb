"""What a ``dense-plantain`` process sets before the numeric libraries load (imported first by ``cli``).

OpenBLAS, the BLAS of numpy's and scipy's wheels, starts one thread per core when it loads,
and after each piece of work every such thread busy-waits for the next for about 2^28 cycles
before it sleeps (its ``OPENBLAS_THREAD_TIMEOUT``, a power of two from 2^4 to 2^30 cycles). A
command loads two copies (numpy's and scipy's), and the analysis runs its heavy loops in the
statistics engine's own threads, so that spinning only takes CPU from them: measured on a 2-core
machine (benches/RESULTS.md), importing numpy and scipy.special used 0.78 s of CPU by default and
0.41-0.55 s with 2^4. Threads that sleep at once are woken for the next BLAS call as before, so
the BLAS work (the Welch null's products in ``compare``) keeps every thread; numbers do not change.
A value the user set is kept. Set only when ``dense_plantain.cli`` is imported (the
``dense-plantain`` command, ``python -m dense_plantain``) and only before numpy loads: importing
the package's other modules in a notebook sets nothing.
"""

from __future__ import annotations

import os

#: The environment this module sets where the user has not: name -> value.
DEFAULTS = {"OPENBLAS_THREAD_TIMEOUT": "4"}

for _name, _value in DEFAULTS.items():
    os.environ.setdefault(_name, _value)
