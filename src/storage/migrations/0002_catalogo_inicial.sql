-- The catalogue of the end-to-end guide: four books, five copies each.

INSERT INTO libros (isbn, titulo, autor, ejemplares) VALUES
    ('978-0134685991', 'Effective Java', 'Joshua Bloch', 5),
    ('978-0135957059', 'The Pragmatic Programmer', 'David Thomas, Andrew Hunt', 5),
    ('978-0596007126', 'Head First Design Patterns', 'Eric Freeman, Elisabeth Robson', 5),
    ('978-1491950357', 'Building Microservices', 'Sam Newman', 5)
ON CONFLICT (isbn) DO NOTHING;
