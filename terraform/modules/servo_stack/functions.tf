# The eight Cloud Functions (2nd gen), one per folder of functions/: each folder's main.py
# defines the entry point named like the folder.

locals {
  # public: reachable from the internet (clients call trigger and api, the worker calls
  # callback), yet every call needs an invoker's identity. The rest are called only by Cloud
  # Tasks, Cloud Scheduler and Pub/Sub push, which count as internal traffic.
  function_steps = {
    trigger = {
      public                           = true
      min_instance_count               = 0
      max_instance_count               = 20
      available_memory                 = "512Mi"
      available_cpu                    = "1"
      timeout_seconds                  = 60
      max_instance_request_concurrency = 8
    }
    api = {
      public                           = true
      min_instance_count               = 0
      max_instance_count               = 20
      available_memory                 = "1Gi"
      available_cpu                    = "1"
      timeout_seconds                  = 120
      max_instance_request_concurrency = 8
    }
    # One pool of warm instances serves all control traffic (dispatch, retry, finalize).
    dispatch = {
      public                           = false
      min_instance_count               = 1
      max_instance_count               = 50
      available_memory                 = "512Mi"
      available_cpu                    = "1"
      timeout_seconds                  = var.dispatch_deadline_seconds
      max_instance_request_concurrency = 16
    }
    callback = {
      public                           = true
      min_instance_count               = 1
      max_instance_count               = 50
      available_memory                 = "512Mi"
      available_cpu                    = "1"
      timeout_seconds                  = 60
      max_instance_request_concurrency = 16
    }
    # One sweep, tick or compaction at a time: each is a pass over the whole workspace.
    sweep = {
      public                           = false
      min_instance_count               = 0
      max_instance_count               = 1
      available_memory                 = "1Gi"
      available_cpu                    = "1"
      timeout_seconds                  = 540
      max_instance_request_concurrency = 1
    }
    tick = {
      public                           = false
      min_instance_count               = 0
      max_instance_count               = 1
      available_memory                 = "512Mi"
      available_cpu                    = "1"
      timeout_seconds                  = 540
      max_instance_request_concurrency = 1
    }
    sensor_evaluate = {
      public                           = false
      min_instance_count               = 0
      max_instance_count               = 10
      available_memory                 = "512Mi"
      available_cpu                    = "1"
      timeout_seconds                  = 540
      max_instance_request_concurrency = 4
    }
    compaction = {
      public                           = false
      min_instance_count               = 0
      max_instance_count               = 1
      available_memory                 = "2Gi"
      available_cpu                    = "1"
      timeout_seconds                  = 900
      max_instance_request_concurrency = 1
    }
  }

  function_sizing = {
    for step, defaults in local.function_steps : step => merge(
      defaults,
      { for key, value in try(var.functions[step], {}) : key => value if value != null },
    )
  }

  # The configuration servo.cloud.CloudConfig.from_env reads (and SERVO_CALLBACK_SECRET, set
  # from Secret Manager below).
  function_environment = {
    SERVO_GCP_PROJECT           = var.project_id
    SERVO_BUCKET                = google_storage_bucket.data.name
    SERVO_TASKS_QUEUE           = google_cloud_tasks_queue.control.id
    SERVO_EXECUTE_QUEUE         = google_cloud_tasks_queue.execute.id
    SERVO_TARGET_DISPATCH       = local.function_urls["dispatch"]
    SERVO_TARGET_EXECUTE        = "${local.worker_url}/execute"
    SERVO_EVALUATOR_URL         = "${local.worker_url}/evaluate"
    SERVO_TENANT                = var.tenant
    SERVO_WORKSPACE             = var.workspace
    SERVO_FIRESTORE_DATABASE    = google_firestore_database.state.name
    SERVO_TASKS_SERVICE_ACCOUNT = google_service_account.tasks.email
    SERVO_ID_TOKEN_SOURCE       = "metadata"
    SERVO_DISPATCH_DEADLINE_S   = tostring(var.dispatch_deadline_seconds)
    SERVO_EXECUTE_DEADLINE_S    = tostring(var.execute_deadline_seconds)
    SERVO_HEARTBEAT_INTERVAL_MS = tostring(var.heartbeat_interval_ms)
    SERVO_HEARTBEAT_TIMEOUT_MS  = tostring(var.heartbeat_timeout_ms)
    SERVO_LOG_LEVEL             = var.log_level
  }

  # Set only when given: an empty value would mean the same as an absent one anyway.
  optional_function_environment = {
    for name, value in {
      SERVO_STORAGE_PREFIX       = var.storage_prefix
      SERVO_TOPIC_PREFIX         = var.topic_prefix
      SERVO_DISPATCH_TIMEOUT_MS  = var.control_plane_settings.dispatch_timeout_ms == null ? "" : tostring(var.control_plane_settings.dispatch_timeout_ms)
      SERVO_CANCEL_GRACE_MS      = var.control_plane_settings.cancel_grace_ms == null ? "" : tostring(var.control_plane_settings.cancel_grace_ms)
      SERVO_MAX_CONCURRENT_TASKS = var.control_plane_settings.max_concurrent_tasks == null ? "" : tostring(var.control_plane_settings.max_concurrent_tasks)
      SERVO_STALE_RUN_WRITE_MS   = var.control_plane_settings.stale_run_write_ms == null ? "" : tostring(var.control_plane_settings.stale_run_write_ms)
    } : name => value if value != ""
  }

  tracing_environment = {
    for name, value in {
      SERVO_TRACING      = "gcp"
      SERVO_TRACE_SAMPLE = tostring(var.cloud_trace_sample)
    } : name => value if var.cloud_trace_sample != null
  }
}

resource "google_cloudfunctions2_function" "step" {
  for_each = local.function_steps

  project     = var.project_id
  location    = var.region
  name        = local.function_names[each.key]
  description = "Servo ${each.key} of ${var.tenant}/${var.workspace}"
  labels      = merge(local.labels, { servo-step = replace(each.key, "_", "-") })

  build_config {
    runtime         = var.python_runtime
    entry_point     = each.key
    service_account = var.build_service_account

    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_objects[each.key]
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.functions.email
    ingress_settings                 = each.value.public ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    min_instance_count               = local.function_sizing[each.key].min_instance_count
    max_instance_count               = local.function_sizing[each.key].max_instance_count
    available_memory                 = local.function_sizing[each.key].available_memory
    available_cpu                    = local.function_sizing[each.key].available_cpu
    timeout_seconds                  = local.function_sizing[each.key].timeout_seconds
    max_instance_request_concurrency = local.function_sizing[each.key].max_instance_request_concurrency

    environment_variables = merge(
      local.function_environment,
      local.optional_function_environment,
      local.tracing_environment,
    )

    secret_environment_variables {
      key        = "SERVO_CALLBACK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.callback.secret_id
      version    = google_secret_manager_secret_version.callback.version
    }
  }

  # A function must not start before it may read the secret and use Firestore and the bucket.
  depends_on = [
    google_secret_manager_secret_iam_member.functions_callback_secret,
    google_project_iam_member.functions_firestore,
    google_storage_bucket_iam_member.functions_objects,
  ]
}
