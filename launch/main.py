"""Runs the main job: ``python launch/main.py --config=configs/default.py --workdir=DIR``.

The console shows the job's own progress bar and metrics; library logging (orbax, absl INFO)
goes to ``DIR/train.INFO`` (``--alsologtostderr`` shows it too). Multi-process (one process
per host, or several on one host over loopback): ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I``; ``--distributed`` alone lets
``jax.distributed.initialize()`` read the cluster (TPU pods, SLURM, ...).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from launch import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, summary and plots.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detect).")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError("Too many command-line arguments.")
  os.makedirs(FLAGS.workdir, exist_ok=True)
  logging.get_absl_handler().use_absl_log_file("train", FLAGS.workdir)
  if FLAGS.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives only
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif FLAGS.distributed:
    jax.distributed.initialize()
  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
               jax.devices())
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
