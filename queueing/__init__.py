"""Pure queueing and overload policy shared by the live server and the simulator.

The hot modules may run compiled with mypyc: ``queueing/native.py`` serves the
compiled build only while it matches the sources, pure Python otherwise, and
``native_status()`` says which (docs/queueing.md, "Compiled build").
"""

from queueing.native import install as _install_native
from queueing.native import native_status

_install_native()

__all__ = ["native_status"]
