require ["date", "relational", "fileinto"];
if date :value "lt" :zone "+0000" "date" "hour" "06" { fileinto "Night"; }
if date :is :originalzone "date" "zone" "-0800" { fileinto "Pacific"; }
if date :is :zone "+0000" "date" "weekday" "3" { fileinto "Wednesday"; }
if date :is :zone "+0000" "date" "date" "2026-12-03" { fileinto "Dec3"; }
