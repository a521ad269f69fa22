# What tools/gpu_check.sh and tools/gpu_train.sh share: sourced by both from the repository root,
# never run by itself.

# find_python NAME: PY, unless it is set, is the Python with torch: .venv/bin/python, else python3,
# else python; with none of them the script (NAME, in the message) stops with exit status 2.
find_python() {
  [ -n "${PY:-}" ] && return 0
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python
  elif command -v python3 > /dev/null 2>&1; then PY=python3
  elif command -v python > /dev/null 2>&1; then PY=python
  else echo "$1: neither python3 nor python is on the PATH; set PY" >&2; exit 2
  fi
}

# whole_numbers NAME VARIABLE...: each variable named holds a whole number, or the script (NAME)
# stops with exit status 2, naming the first that does not.
whole_numbers() {
  local script=$1 n
  shift
  for n in "$@"; do
    [[ ${!n} =~ ^[0-9]+$ ]] || { echo "$script: $n=${!n}: expected a whole number" >&2; exit 2; }
  done
}
