# Sourced with py set (the python to run): sets launch (the command that starts a script on 2 processes, or on
# 1 without MPI) and ranks. --oversubscribe goes to Open MPI only (MPICH's mpiexec rejects it).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
if command -v mpiexec >/dev/null 2>&1 && $py -c "import mpi4py" 2>/dev/null; then
  if mpiexec --version 2>&1 | grep -qiE "open ?mpi|openrte"; then
    launch=(mpiexec -n 2 --oversubscribe "$py")
  else
    launch=(mpiexec -n 2 "$py")
  fi
  ranks=2
else
  launch=("$py"); ranks=1; export OMP_NUM_THREADS=2
fi
