# Sourced by scripts/test.sh and scripts/demo.sh after scripts/setup.sh: put uv on PATH when pip installed it
# outside PATH (pyenv before a rehash, pip --user), and never let uv download a Python.
if ! uv --version >/dev/null 2>&1; then
  for d in "$HOME/.local/bin" "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"; do
    if [ -n "$d" ] && [ -x "$d/uv" ]; then PATH="$d:$PATH"; fi
  done
  export PATH
fi
export UV_PYTHON_DOWNLOADS=never
