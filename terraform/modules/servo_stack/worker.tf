# The worker service on Cloud Run: runs one attempt per request in warm child processes
# (servo.worker.service) and evaluates schedule and sensor functions for tick and
# sensor_evaluate.

locals {
  # What servo.worker.service.WorkerConfig.from_env reads.
  worker_base_environment = {
    SERVO_GCP_PROJECT      = var.project_id
    SERVO_BUCKET           = google_storage_bucket.data.name
    SERVO_CALLBACK_URL     = local.function_urls["callback"]
    SERVO_WORKER_PROCESSES = tostring(var.worker_processes)
    SERVO_ID_TOKEN_SOURCE  = "metadata"
  }

  worker_environment = merge(
    local.worker_base_environment,
    { for name, value in { SERVO_STORAGE_PREFIX = var.storage_prefix } : name => value if value != "" },
    local.tracing_environment,
  )
}

resource "google_cloud_run_v2_service" "worker" {
  project             = var.project_id
  location            = var.region
  name                = local.worker_name
  description         = "Servo worker of ${var.tenant}/${var.workspace}"
  ingress             = var.worker_ingress
  deletion_protection = var.deletion_protection
  labels              = local.labels

  template {
    service_account       = google_service_account.worker.email
    execution_environment = "EXECUTION_ENVIRONMENT_GEN2"
    # One request per process: an attempt never waits inside the worker for a process; when
    # all are busy the worker answers 429 and Cloud Tasks delivers the attempt again later.
    max_instance_request_concurrency = var.worker_processes
    # The longest task; Cloud Tasks gives up on an execute delivery after the same time.
    timeout = "${var.execute_deadline_seconds}s"

    scaling {
      min_instance_count = var.worker_min_instances
      max_instance_count = var.worker_max_instances
    }

    containers {
      image = var.worker_image

      ports {
        container_port = 8080
      }

      resources {
        limits = {
          cpu    = var.worker_cpu
          memory = var.worker_memory
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      dynamic "env" {
        for_each = local.worker_environment
        content {
          name  = env.key
          value = env.value
        }
      }

      startup_probe {
        period_seconds    = 2
        failure_threshold = 30
        http_get {
          path = "/healthz"
        }
      }
    }
  }

  depends_on = [
    google_storage_bucket_iam_member.worker_code,
    google_storage_bucket_iam_member.worker_outputs_logs,
  ]
}
