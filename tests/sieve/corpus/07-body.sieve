require ["body", "fileinto"];
if body :text :contains "room 4" { fileinto "Meetings"; }
if body :raw :contains "Caf=C3=A9" { fileinto "Raw"; }
if body :content "text/html" :contains "<b>" { fileinto "Html"; }
