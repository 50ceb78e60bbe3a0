# One image for the API, the worker and the migrate step. On a GPU host `pip install torch`
# takes the CUDA build; the API process never imports it.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml constraints.txt README.md alembic.ini ./
COPY api api
COPY worker worker
COPY shared shared
COPY parley parley
COPY alembic alembic
RUN pip install --no-cache-dir torch && pip install --no-cache-dir -c constraints.txt -e '.[flower]'
ENV PARLEY_HOST=0.0.0.0
EXPOSE 8000
CMD ["parley", "api"]
