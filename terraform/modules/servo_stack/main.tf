# The Servo control plane of one tenant/workspace on Google Cloud (see docs/gcp.md):
# Firestore (state), a bucket (ledger, deployments, outputs, logs, projections), two Cloud
# Tasks queues, the callback secret, eight Cloud Functions, the Cloud Run worker, Cloud
# Scheduler jobs and the sensor plumbing, each service under its own service account.

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  database_id     = coalesce(var.firestore_database_id, "${var.name_prefix}-state")
  bucket_name     = coalesce(var.bucket_name, "${var.project_id}-${var.name_prefix}")
  bucket_location = upper(coalesce(var.bucket_location, var.region))

  # Every object of this tenant/workspace lives under this prefix (servo.adapters.gcp.config).
  object_root = "${var.storage_prefix == "" ? "" : "${var.storage_prefix}/"}tenants/${var.tenant}/workspaces/${var.workspace}/"

  labels = merge(var.labels, {
    servo-tenant    = lower(var.tenant)
    servo-workspace = lower(var.workspace)
  })

  # Cloud Run's deterministic URLs (https://SERVICE-PROJECT_NUMBER.REGION.run.app), which the
  # functions and the worker can be told before they exist: the functions' own environment
  # holds the dispatch URL, and the worker and the functions name each other.
  run_app_suffix = "${data.google_project.this.number}.${var.region}.run.app"
  function_names = { for step in keys(local.function_steps) : step => "${var.name_prefix}-${replace(step, "_", "-")}" }
  function_urls  = { for step, name in local.function_names : step => "https://${name}-${local.run_app_suffix}" }
  worker_name    = "${var.name_prefix}-worker"
  worker_url     = "https://${local.worker_name}-${local.run_app_suffix}"

  # Queued attempts wait in Cloud Tasks rather than in the worker (docs/gcp.md).
  worker_capacity = var.worker_max_instances * var.worker_processes

  # Composite indexes of the control plane's queries (servo.control, servo.projections,
  # servo.local). Each is [field, ASCENDING | DESCENDING | CONTAINS]; the last field is the
  # one ordered on. The store queries tenants/T/workspaces/W/<collection> itself, so the
  # indexes are collection-scoped (a collection-group index does not serve those queries).
  firestore_indexes = {
    tasks_run_state = {
      collection = "tasks"
      fields     = [["run_id", "ASCENDING"], ["state", "ASCENDING"]]
    }
    tasks_run_state_order = {
      collection = "tasks"
      fields     = [["run_id", "ASCENDING"], ["state", "ASCENDING"], ["order", "ASCENDING"]]
    }
    tasks_state_order = {
      collection = "tasks"
      fields     = [["state", "ASCENDING"], ["order", "ASCENDING"]]
    }
    tasks_state_pool_order = {
      collection = "tasks"
      fields     = [["state", "ASCENDING"], ["pool", "ASCENDING"], ["order", "ASCENDING"]]
    }
    tasks_run_index = {
      collection = "tasks"
      fields     = [["run_id", "ASCENDING"], ["index", "ASCENDING"]]
    }
    tasks_run_lc_desc = {
      collection = "tasks"
      fields     = [["run_id", "ASCENDING"], ["lc", "DESCENDING"]]
    }
    tasks_run_downstream_succeeded = {
      collection = "tasks"
      fields     = [["run_id", "ASCENDING"], ["downstream", "CONTAINS"], ["succeeded", "ASCENDING"]]
    }
    tasks_run_state_cancel = {
      collection = "tasks"
      fields     = [["run_id", "ASCENDING"], ["state", "ASCENDING"], ["cancel_requested", "ASCENDING"]]
    }
    runs_state_created = {
      collection = "runs"
      fields     = [["state", "ASCENDING"], ["created_ms", "ASCENDING"]]
    }
    ticks_kind_name_evaluated_desc = {
      collection = "ticks"
      fields     = [["kind", "ASCENDING"], ["name", "ASCENDING"], ["evaluated_ms", "DESCENDING"]]
    }
    ticks_kind_name_scheduled_desc = {
      collection = "ticks"
      fields     = [["kind", "ASCENDING"], ["name", "ASCENDING"], ["scheduled_ms", "DESCENDING"]]
    }
  }
}

# -- Firestore ---------------------------------------------------------------------------------

resource "google_firestore_database" "state" {
  project     = var.project_id
  name        = local.database_id
  location_id = coalesce(var.firestore_location, var.region)
  type        = "FIRESTORE_NATIVE"
  # Servo's transactions are written for Firestore's server-side pessimistic locking.
  concurrency_mode                  = "PESSIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = var.firestore_point_in_time_recovery ? "POINT_IN_TIME_RECOVERY_ENABLED" : "POINT_IN_TIME_RECOVERY_DISABLED"
  delete_protection_state           = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = "DELETE"
}

resource "google_firestore_index" "control" {
  for_each = local.firestore_indexes

  project     = var.project_id
  database    = google_firestore_database.state.name
  collection  = each.value.collection
  query_scope = "COLLECTION"

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value[0]
      order        = fields.value[1] == "CONTAINS" ? null : fields.value[1]
      array_config = fields.value[1] == "CONTAINS" ? "CONTAINS" : null
    }
  }
}

# -- Cloud Storage -----------------------------------------------------------------------------

resource "google_storage_bucket" "data" {
  project                     = var.project_id
  name                        = local.bucket_name
  location                    = local.bucket_location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  # Ledger segments are immutable and written once (ifGenerationMatch=0); compare-and-set on
  # blobs uses the live generation. Old versions would only cost storage.
  versioning {
    enabled = false
  }

  dynamic "lifecycle_rule" {
    for_each = var.log_retention_days == null ? [] : [var.log_retention_days]
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = ["${local.object_root}blobs/logs/"]
      }
      action {
        type = "Delete"
      }
    }
  }

  dynamic "lifecycle_rule" {
    for_each = var.output_retention_days == null ? [] : [var.output_retention_days]
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = ["${local.object_root}blobs/outputs/"]
      }
      action {
        type = "Delete"
      }
    }
  }
}

# -- The callback secret -----------------------------------------------------------------------

# Signs each attempt's report token. It is kept in the Terraform state too: keep the state in
# a bucket only the operators can read.
resource "random_password" "callback_secret" {
  length  = 64
  special = false
}

resource "google_secret_manager_secret" "callback" {
  project   = var.project_id
  secret_id = "${var.name_prefix}-callback-secret"
  labels    = local.labels

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "callback" {
  secret      = google_secret_manager_secret.callback.id
  secret_data = random_password.callback_secret.result
}

# -- Cloud Tasks -------------------------------------------------------------------------------

# dispatch, retry and finalize messages to the dispatch function. Every handler is idempotent
# and a message that can never succeed is acknowledged with 200, so attempts are unlimited.
resource "google_cloud_tasks_queue" "control" {
  project  = var.project_id
  location = var.region
  name     = "${var.name_prefix}-control"

  rate_limits {
    max_dispatches_per_second = var.control_queue.max_dispatches_per_second
    max_concurrent_dispatches = var.control_queue.max_concurrent_dispatches
  }

  retry_config {
    max_attempts       = -1
    max_retry_duration = "0s"
    min_backoff        = var.control_queue.min_backoff
    max_backoff        = var.control_queue.max_backoff
    max_doublings      = var.control_queue.max_doublings
  }
}

# execute messages to the worker service, throttled to its capacity; a worker with every
# process busy answers 429 and the attempt is delivered again after the backoff.
resource "google_cloud_tasks_queue" "execute" {
  project  = var.project_id
  location = var.region
  name     = "${var.name_prefix}-execute"

  rate_limits {
    max_dispatches_per_second = var.execute_queue.max_dispatches_per_second
    max_concurrent_dispatches = local.worker_capacity
  }

  retry_config {
    max_attempts       = -1
    max_retry_duration = "0s"
    min_backoff        = var.execute_queue.min_backoff
    max_backoff        = var.execute_queue.max_backoff
    max_doublings      = var.execute_queue.max_doublings
  }
}

# -- Pub/Sub topics Servo publishes to ---------------------------------------------------------

resource "google_pubsub_topic" "bus" {
  for_each = var.bus_topics

  project = var.project_id
  name    = "${var.topic_prefix}${each.value}"
  labels  = local.labels
}
