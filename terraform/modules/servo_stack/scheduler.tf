# Cloud Scheduler: the only clock of the control plane. Each job POSTs an empty JSON object
# to its function with an OIDC token of the scheduler account.

locals {
  fixed_schedules = {
    # The safety net (lost messages, silent workers, timeouts, retries), then the outbox
    # drained into ledger segments.
    sweep = "* * * * *"
    # The schedules due, then asset automation.
    tick = "* * * * *"
    # New ledger segments folded into the Parquet projections.
    compaction = var.compaction_schedule
  }

  # The interval sensors too (event sensors are pushed to sensor_evaluate by Pub/Sub).
  scheduled_steps = merge(
    local.fixed_schedules,
    { for step, schedule in { sensor_evaluate = var.sensor_evaluate_schedule } : step => schedule if schedule != null },
  )
}

resource "google_cloud_scheduler_job" "step" {
  for_each = local.scheduled_steps

  project          = var.project_id
  region           = var.region
  name             = "${var.name_prefix}-${replace(each.key, "_", "-")}"
  description      = "Servo ${each.key} of ${var.tenant}/${var.workspace}"
  schedule         = each.value
  time_zone        = var.schedule_time_zone
  attempt_deadline = "${min(local.function_sizing[each.key].timeout_seconds, 1800)}s"

  # The next run is at most a few minutes away and catches up on everything a failed one
  # left; retrying a run would only overlap with it.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.step[each.key].service_config[0].uri
    body        = base64encode("{}")
    headers = {
      "Content-Type" = "application/json"
    }

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.step[each.key].service_config[0].uri
    }
  }

  depends_on = [google_cloud_run_v2_service_iam_member.function_invoker]
}
