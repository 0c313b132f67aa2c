#!/usr/bin/env bash
# mergen exec -it is tested the way a person uses it: in a terminal that
# tmux drives (keys in, the pane read back).
set -euo pipefail
apt_install tmux
