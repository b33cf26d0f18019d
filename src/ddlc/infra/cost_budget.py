"""A monthly AWS Budget for the cluster, with actual and forecast notifications.

It filters on the `ddlc:cluster` cost allocation tag: activate that tag once per account in the Billing
console (docs/infrastructure.md), or the budget sees nothing.
"""

from __future__ import annotations

from aws_cdk import aws_budgets as budgets
from aws_cdk import aws_sns as sns
from constructs import Construct

ACTUAL_ALERT_PERCENT = 80
FORECAST_ALERT_PERCENT = 100


class CostBudget(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        cluster_name: str,
        monthly_usd: float,
        email: str,
        topic: sns.ITopic,
        cluster_tag: str,
    ) -> None:
        super().__init__(scope, construct_id)
        subscribers = [
            budgets.CfnBudget.SubscriberProperty(subscription_type="EMAIL", address=email),
            budgets.CfnBudget.SubscriberProperty(subscription_type="SNS", address=topic.topic_arn),
        ]

        def notify(kind: str, percent: int) -> budgets.CfnBudget.NotificationWithSubscribersProperty:
            return budgets.CfnBudget.NotificationWithSubscribersProperty(
                notification=budgets.CfnBudget.NotificationProperty(
                    notification_type=kind, comparison_operator="GREATER_THAN",
                    threshold=percent, threshold_type="PERCENTAGE",
                ),
                subscribers=subscribers,
            )

        self.budget = budgets.CfnBudget(
            self,
            "Budget",
            budget=budgets.CfnBudget.BudgetDataProperty(
                budget_name=f"{cluster_name}-monthly",
                budget_type="COST",
                time_unit="MONTHLY",
                budget_limit=budgets.CfnBudget.SpendProperty(amount=monthly_usd, unit="USD"),
                cost_filters={"TagKeyValue": [f"user:{cluster_tag}${cluster_name}"]},
            ),
            notifications_with_subscribers=[
                notify("ACTUAL", ACTUAL_ALERT_PERCENT),
                notify("FORECASTED", FORECAST_ALERT_PERCENT),
            ],
        )
