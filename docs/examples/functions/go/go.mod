module example.com/upper

go 1.21
