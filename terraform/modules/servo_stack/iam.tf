# One service account per role, each granted only what its role needs, on the narrowest
# resource that holds the permission (a queue, a secret, a service, a bucket prefix).

resource "google_service_account" "functions" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-functions"
  display_name = "Servo functions (${var.tenant}/${var.workspace})"
  description  = "Runs the Servo Cloud Functions: Firestore state, the bucket, enqueuing tasks."
}

resource "google_service_account" "worker" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-worker"
  display_name = "Servo worker (${var.tenant}/${var.workspace})"
  description  = "Runs user code on Cloud Run: reads code and inputs, writes outputs and logs, reports to callback."
}

resource "google_service_account" "tasks" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-tasks"
  display_name = "Servo Cloud Tasks caller (${var.tenant}/${var.workspace})"
  description  = "The OIDC identity of every Cloud Task (SERVO_TASKS_SERVICE_ACCOUNT): invokes dispatch and the worker."
}

resource "google_service_account" "scheduler" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-scheduler"
  display_name = "Servo Cloud Scheduler caller (${var.tenant}/${var.workspace})"
  description  = "The OIDC identity of the Cloud Scheduler jobs: invokes sweep, tick, compaction and sensor_evaluate."
}

resource "google_service_account" "push" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-push"
  display_name = "Servo sensor push (${var.tenant}/${var.workspace})"
  description  = "The OIDC identity of the sensors' Pub/Sub push subscriptions: invokes sensor_evaluate."
}

locals {
  service_account_members = {
    functions = "serviceAccount:${google_service_account.functions.email}"
    worker    = "serviceAccount:${google_service_account.worker.email}"
    tasks     = "serviceAccount:${google_service_account.tasks.email}"
    scheduler = "serviceAccount:${google_service_account.scheduler.email}"
    push      = "serviceAccount:${google_service_account.push.email}"
  }

  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"

  # IAM conditions on object names: projects/_/buckets/BUCKET/objects/NAME.
  object_resource_root = "projects/_/buckets/${google_storage_bucket.data.name}/objects/${local.object_root}"

  # Who may invoke which function (roles/run.invoker on the function's Cloud Run service).
  function_invokers = merge(
    { for member in var.invoker_members : "trigger ${member}" => { step = "trigger", member = member } },
    { for member in var.invoker_members : "api ${member}" => { step = "api", member = member } },
    {
      "dispatch tasks"            = { step = "dispatch", member = local.service_account_members.tasks }
      "callback worker"           = { step = "callback", member = local.service_account_members.worker }
      "sweep scheduler"           = { step = "sweep", member = local.service_account_members.scheduler }
      "tick scheduler"            = { step = "tick", member = local.service_account_members.scheduler }
      "compaction scheduler"      = { step = "compaction", member = local.service_account_members.scheduler }
      "sensor_evaluate scheduler" = { step = "sensor_evaluate", member = local.service_account_members.scheduler }
      "sensor_evaluate push"      = { step = "sensor_evaluate", member = local.service_account_members.push }
    },
  )
}

# -- The functions' service account --------------------------------------------------------------

# Firestore: this stack's database only.
resource "google_project_iam_member" "functions_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = local.service_account_members.functions

  condition {
    title       = "servo-${var.name_prefix}-database"
    description = "Only the Firestore database of this Servo stack."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.state.name}\""
  }
}

# The ledger, deployments, outputs, logs and projections: objects of this stack's bucket.
resource "google_storage_bucket_iam_member" "functions_objects" {
  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectUser"
  member = local.service_account_members.functions
}

resource "google_cloud_tasks_queue_iam_member" "functions_enqueue" {
  for_each = {
    control = google_cloud_tasks_queue.control.name
    execute = google_cloud_tasks_queue.execute.name
  }

  project  = var.project_id
  location = var.region
  name     = each.value
  role     = "roles/cloudtasks.enqueuer"
  member   = local.service_account_members.functions
}

# Creating a task that carries the tasks account's OIDC token acts as that account.
resource "google_service_account_iam_member" "functions_act_as_tasks" {
  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = local.service_account_members.functions
}

resource "google_secret_manager_secret_iam_member" "functions_callback_secret" {
  project   = var.project_id
  secret_id = google_secret_manager_secret.callback.secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = local.service_account_members.functions
}

resource "google_pubsub_topic_iam_member" "functions_publish_bus" {
  for_each = google_pubsub_topic.bus

  project = var.project_id
  topic   = each.value.name
  role    = "roles/pubsub.publisher"
  member  = local.service_account_members.functions
}

# -- The worker's service account ----------------------------------------------------------------

# Code: the deployments of this tenant/workspace, read-only.
resource "google_storage_bucket_iam_member" "worker_code" {
  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectViewer"
  member = local.service_account_members.worker

  condition {
    title       = "servo-${var.name_prefix}-worker-code"
    description = "Read the code versions deployed to this tenant/workspace."
    expression  = "resource.name.startsWith(\"${local.object_resource_root}blobs/deployments/\")"
  }
}

# Inputs are upstream outputs; an attempt writes its staged output and its log, and may
# write them again when the same attempt is delivered twice.
resource "google_storage_bucket_iam_member" "worker_outputs_logs" {
  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectUser"
  member = local.service_account_members.worker

  condition {
    title       = "servo-${var.name_prefix}-worker-outputs-logs"
    description = "Read and write asset outputs and attempt logs of this tenant/workspace."
    expression  = "resource.name.startsWith(\"${local.object_resource_root}blobs/outputs/\") || resource.name.startsWith(\"${local.object_resource_root}blobs/logs/\")"
  }
}

# -- Invokers ------------------------------------------------------------------------------------

# A 2nd-gen function is served by the Cloud Run service of the same name.
resource "google_cloud_run_v2_service_iam_member" "function_invoker" {
  for_each = local.function_invokers

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.step[each.value.step].name
  role     = "roles/run.invoker"
  member   = each.value.member
}

# The worker is invoked by Cloud Tasks (execute) and by tick and sensor_evaluate (evaluate).
resource "google_cloud_run_v2_service_iam_member" "worker_invoker" {
  for_each = {
    tasks     = local.service_account_members.tasks
    functions = local.service_account_members.functions
  }

  project  = var.project_id
  location = var.region
  name     = google_cloud_run_v2_service.worker.name
  role     = "roles/run.invoker"
  member   = each.value
}

# -- Tracing (optional) --------------------------------------------------------------------------

resource "google_project_iam_member" "cloud_trace" {
  for_each = {
    for name, member in {
      functions = local.service_account_members.functions
      worker    = local.service_account_members.worker
    } : name => member if var.cloud_trace_sample != null
  }

  project = var.project_id
  role    = "roles/cloudtrace.agent"
  member  = each.value
}
