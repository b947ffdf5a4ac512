# mpi_flags: what the MPI script tests share (sourced, not a test itself): skip without mpirun,
# else mpi_flags for running more ranks than cores (and as root, in a container).
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed"; exit 77; }
mpi_flags=(--oversubscribe)
[ "$(id -u)" -ne 0 ] || mpi_flags+=(--allow-run-as-root)
