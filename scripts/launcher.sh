# Sourced by quickstart.sh and benchmarks/cfg_digits.sh (from the project root): set up the virtual environment,
# then set py (its python), launch (the command that starts a script on 2 processes, or 1 without MPI) and ranks.
bash setup.sh
py=.venv/bin/python
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
if command -v mpiexec >/dev/null 2>&1 && $py -c "import mpi4py" 2>/dev/null; then
  launch=(mpiexec -n 2 --oversubscribe "$py"); ranks=2
else
  launch=("$py"); ranks=1; export OMP_NUM_THREADS=2
fi
