//! Plan versions.

use chrono::{DateTime, Utc};
use relay_core::PlanId;
use sqlx::any::AnyRow;
use sqlx::AnyConnection;

use super::{from_ts, i, parse, s, ts, SqlBillingStore};
use crate::error::{BillingError, Result};
use crate::plan::{Plan, PlanSpec, PlanStatus};

fn plan_from_row(r: &AnyRow) -> Result<Plan> {
    let status = match s(r, "status")?.as_str() {
        "active" => PlanStatus::Active,
        "archived" => PlanStatus::Archived,
        other => return Err(BillingError::Corrupt(format!("plan status `{other}`"))),
    };
    Ok(Plan {
        id: parse(&s(r, "id")?)?,
        family: s(r, "family")?,
        version: u32::try_from(i(r, "version")?)
            .map_err(|_| BillingError::Corrupt("plan version".into()))?,
        spec: serde_json::from_str(&s(r, "spec")?)?,
        status,
        created_at: from_ts(i(r, "created_at")?)?,
    })
}

pub(crate) async fn load_plan(c: &mut AnyConnection, id: &PlanId) -> Result<Option<Plan>> {
    let row = sqlx::query(
        "SELECT id, family, version, status, spec, created_at FROM billing_plans WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&mut *c)
    .await?;
    row.as_ref().map(plan_from_row).transpose()
}

pub(crate) async fn must_plan(c: &mut AnyConnection, id: &PlanId) -> Result<Plan> {
    load_plan(c, id)
        .await?
        .ok_or_else(|| BillingError::NotFound {
            kind: "plan",
            id: id.to_string(),
        })
}

async fn insert_plan(c: &mut AnyConnection, plan: &Plan) -> Result<()> {
    sqlx::query(
        "INSERT INTO billing_plans (id, family, version, status, spec, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(plan.id.as_str())
    .bind(&plan.family)
    .bind(i64::from(plan.version))
    .bind(plan.status.as_str())
    .bind(serde_json::to_string(&plan.spec)?)
    .bind(ts(plan.created_at))
    .execute(&mut *c)
    .await?;
    Ok(())
}

impl SqlBillingStore {
    pub(super) async fn create_plan_impl(
        &self,
        spec: &PlanSpec,
        now: DateTime<Utc>,
    ) -> Result<Plan> {
        spec.validate()?;
        let id = PlanId::new();
        let plan = Plan {
            family: id.to_string(),
            id,
            version: 1,
            spec: spec.clone(),
            status: PlanStatus::Active,
            created_at: from_ts(ts(now))?,
        };
        let mut c = self.pool.acquire().await?;
        insert_plan(&mut c, &plan).await?;
        Ok(plan)
    }

    pub(super) async fn revise_plan_impl(
        &self,
        id: &PlanId,
        spec: &PlanSpec,
        now: DateTime<Utc>,
    ) -> Result<Plan> {
        spec.validate()?;
        let mut db = self.pool.begin().await?;
        let old = must_plan(&mut db, id).await?;
        if spec.price.currency() != old.spec.price.currency() {
            return Err(BillingError::InvalidInput(
                "a revision keeps the plan's currency; create a new plan for another currency"
                    .into(),
            ));
        }
        let latest: i64 =
            sqlx::query_scalar("SELECT MAX(version) FROM billing_plans WHERE family = $1")
                .bind(&old.family)
                .fetch_one(&mut *db)
                .await?;
        if i64::from(old.version) != latest {
            return Err(BillingError::InvalidInput(format!(
                "plan {id} is version {} of {latest}; revise the latest version",
                old.version
            )));
        }
        sqlx::query("UPDATE billing_plans SET status = 'archived' WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *db)
            .await?;
        let plan = Plan {
            id: PlanId::new(),
            family: old.family.clone(),
            version: old.version + 1,
            spec: spec.clone(),
            status: PlanStatus::Active,
            created_at: from_ts(ts(now))?,
        };
        // (family, version) is unique: a concurrent revision of the same version loses
        // with a conflict instead of forking the plan.
        insert_plan(&mut db, &plan).await?;
        db.commit().await?;
        Ok(plan)
    }

    pub(super) async fn archive_plan_impl(&self, id: &PlanId) -> Result<Plan> {
        let mut db = self.pool.begin().await?;
        must_plan(&mut db, id).await?;
        sqlx::query("UPDATE billing_plans SET status = 'archived' WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *db)
            .await?;
        let plan = must_plan(&mut db, id).await?;
        db.commit().await?;
        Ok(plan)
    }

    pub(super) async fn plans_impl(&self, include_archived: bool) -> Result<Vec<Plan>> {
        let rows = sqlx::query(
            "SELECT id, family, version, status, spec, created_at FROM billing_plans \
             WHERE ($1 = 1 OR status = 'active') ORDER BY created_at, family, version",
        )
        .bind(i64::from(include_archived))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(plan_from_row).collect()
    }
}
