# Sourced by quickstart.sh and the digits benchmarks (from the project root): set up the virtual environment,
# then set py (its python), launch (the command that starts a script on 2 processes, or 1 without MPI) and ranks.
bash setup.sh
py=.venv/bin/python
source scripts/mpi_launch.sh
