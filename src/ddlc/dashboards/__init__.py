"""ddlc.dashboards"""
