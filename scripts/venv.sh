# Sourced by examples/quickstart.sh and tests/run.sh: `make_venv [PIP ARGS...]` creates ./.venv
# and installs mixsql into it, printing one line per step and, while pip runs, a line every few
# seconds with what it is doing. pip's own log (build-backend notices included) goes to
# .venv/pip.log and is shown only when an install fails.

step() { printf '==> %s\n' "$*"; }

pip_install() {
  local log=.venv/pip.log pid t=0 last
  .venv/bin/python -m pip install --progress-bar off --disable-pip-version-check "$@" >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    t=$((t + 1))
    if ((t % 5 == 0)); then
      last=$(grep -E '^(Collecting|Downloading|Processing|Building|Installing|Obtaining|Preparing)' "$log" | tail -n 1 | cut -c1-90 || true)
      printf '    %4ds  %s\n' "$t" "${last:-resolving ...}"
    fi
  done
  if ! wait "$pid"; then
    cat "$log" >&2
    printf 'pip install %s failed (its log is above and in %s)\n' "$*" "$log" >&2
    return 1
  fi
}

make_venv() {
  if [ ! -x .venv/bin/python ]; then
    step "creating .venv"
    python3 -m venv .venv
  fi
  step "updating pip"
  pip_install --upgrade pip
  step "installing $* into .venv (the first time takes a few minutes)"
  pip_install "$@"
  step "installed: $(.venv/bin/python -c 'import mixsql; print("mixsql", mixsql.__version__)')"
}
